"""The models a service can give its cameras: the bundled ones (``ped2``) and those registered by name in
``StatePaths.models`` (uploaded with ``POST /v1/models`` or made by a fit job). A model is only registered
once ONNX Runtime has loaded it, its amvad metadata is within the contract's bounds and one frame of it fits
the engine's per-model time budget (measured on the engine's device).

A registered name keeps **versions** (``<name>@1.onnx``, ``<name>@2.onnx``, ...): registering or fitting
again under a name adds a version and makes it current, older ones stay for a rollback. ``name`` means the
current version (cameras on it follow each new one), ``name@N`` pins version N. Bundled names have no
versions and cannot be replaced. Files of the layout before versions (``<name>.onnx``) become version 1
(:func:`upgrade_layout`, run by the registry's constructor)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from amvad.models.registry import bundled_models, resolve_model
from amvad.runtime.budget import check_budget
from amvad.runtime.device import pick_device
from amvad.runtime.engine import EngineConfig, default_threads
from amvad.runtime.errors import Conflict, Invalid, NotFound
from amvad.runtime.exported_model import ExportedModel, file_sha256
from amvad.runtime.files import write_atomic

from .config import ServiceSettings
from .state import StatePaths

log = logging.getLogger("amvad.models")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION = r"[1-9][0-9]{0,5}"
VERSION_FILE = re.compile(rf"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}})@(?P<version>{_VERSION})\.onnx$")
REF = re.compile(rf"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}})(?:@(?P<version>{_VERSION}))?$")


class UnknownModel(NotFound):
    """A model name (or version) that is neither bundled nor registered (HTTP 404; 422 where a camera
    names it)."""


class InvalidModel(Invalid):
    """An upload that is not a usable amvad model (bad metadata, settings out of bounds, over the engine's
    time budget), or a bad model name (HTTP 422)."""


class ModelConflict(Conflict):
    """A bundled name, a file that is already a version of the name, or a model in use by cameras (HTTP 409)."""


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model."""
    name: str
    version: int
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def describe(name: str, model: ExportedModel, bundled: bool) -> dict:
    m = model.meta
    return {"name": name, "bundled": bundled, "method": m.method, "height": m.height, "width": m.width,
            "channels": m.channels, "clip_len": m.clip_len, "threshold": m.threshold,
            "components": [c.name for c in m.components], "sha256": model.sha256,
            "bytes": model.path.stat().st_size, "training": {k: v for k, v in m.training.items() if k != "config"}}


def registered_note(name: str, version: int) -> str:
    """What a fit's model card says once the service registered the model (it was not uploaded by hand)."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    back = (f"`POST /v1/models/{name}/rollback` makes version {version - 1} current again" if version > 1
            else f"assign it with `PATCH /v1/cameras/<id> {{\"model\": \"{name}\"}}`")
    return (f"**Registered by the service as `{name}` version {version}** (`{name}@{version}`) on {when}: nothing "
            f"to upload; cameras on `{name}` run it now; {back}.")


def upgrade_layout(paths: StatePaths) -> list[str]:
    """Make each registered model of the layout before versions (``models/<name>.onnx``) version 1 of its
    name; the names moved. Idempotent; a name that already has a version 1 is left as it is (and logged)."""
    moved: list[str] = []
    if not paths.models.is_dir():
        return moved
    for old in sorted(paths.models.glob("*.onnx")):
        name = old.stem
        if old.name.startswith(".") or VERSION_FILE.match(old.name) or not NAME.match(name):
            continue
        target = paths.model_version(name, 1)
        if target.exists():
            log.warning("model file %s left as it is: %s already exists", old.name, target.name)
            continue
        os.replace(old, target)
        moved.append(name)
    if moved:
        log.info("registered models moved to the versioned layout (each is version 1): %s", ", ".join(moved))
    return moved


class ModelRegistry:
    """Name -> model file. ``default`` is the service's own model (a bundled name or a path); ``engine``:
    the engine's settings, whose device, model threads and per-model budget an upload is measured with
    (default :class:`EngineConfig`'s). ``paths`` may still be a bare state directory. ``listeners`` are
    told (with the name) whenever a name gets a new current version; each returns the cameras it moved."""

    def __init__(self, paths: StatePaths | Path, default: str, engine: EngineConfig | None = None) -> None:
        self.paths = paths if isinstance(paths, StatePaths) else StatePaths(Path(paths))
        self.dir = self.paths.models
        self.default = default
        self.engine = engine or EngineConfig()
        self.listeners: list[Callable[[str], list[str]]] = []
        self._lock = threading.Lock()
        self._described: dict[tuple[str, Path, float], dict] = {}  # (name, file, mtime) -> description
        try:
            upgrade_layout(self.paths)
        except OSError as exc:  # a read-only state directory: the old files are still read as version 1
            log.warning("cannot move registered models to the versioned layout: %s", exc)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ModelRegistry:
        return cls(settings.paths, settings.model, settings.engine)

    # -- reading -----------------------------------------------------------------------------------
    def _scan(self) -> dict[str, dict[int, Path]]:
        """name -> {version: file}; a flat ``<name>.onnx`` (not yet upgraded) counts as version 1."""
        found: dict[str, dict[int, Path]] = {}
        if not self.dir.is_dir():
            return found
        for p in sorted(self.dir.glob("*.onnx")):
            if p.name.startswith("."):
                continue
            if m := VERSION_FILE.match(p.name):
                found.setdefault(m["name"], {})[int(m["version"])] = p
            elif NAME.match(p.stem):
                found.setdefault(p.stem, {}).setdefault(1, p)
        return found

    def _current(self, name: str, versions: dict[int, Path]) -> int:
        try:
            chosen = int(json.loads(self.paths.model_current(name).read_text())["current"])
        except (OSError, ValueError, KeyError, TypeError):
            chosen = None
        return chosen if chosen in versions else max(versions)

    def registered(self) -> dict[str, Path]:
        """Each registered name's current file."""
        return {name: versions[self._current(name, versions)] for name, versions in self._scan().items()}

    def versions(self, name: str) -> list[ModelVersion]:
        return [ModelVersion(name, v, p) for v, p in sorted(self._scan().get(name, {}).items())]

    def lookup(self, ref: str) -> ModelVersion | None:
        """The registered version ``ref`` means (``name``: the current one, ``name@N``: version N), or None."""
        m = REF.match(ref or "")
        versions = self._scan().get(m["name"]) if m else None
        if not versions:
            return None
        version = int(m["version"]) if m["version"] else self._current(m["name"], versions)
        return ModelVersion(m["name"], version, versions[version]) if version in versions else None

    def path(self, name: str | None) -> Path:
        """The file of a model name (``name@N``: that version); None is the service's default model."""
        if name is None:
            return resolve_model(self.default)
        found = self.lookup(name)
        if found is not None:
            return found.path
        if name in bundled_models() or name == self.default:
            return resolve_model(name)
        m = REF.match(name)
        if m and m["version"] and (versions := self.versions(m["name"])):
            raise UnknownModel(f"model {m['name']!r} has no version {m['version']}; versions: "
                               f"{[v.version for v in versions]}")
        raise UnknownModel(f"unknown model {name!r}; known: {self.names()}")

    def names(self) -> list[str]:
        return sorted({*bundled_models(), *self._scan()})

    def _describe(self, name: str, path: Path, bundled: bool) -> dict:
        """Loaded once on the CPU to describe it (cached by file and modification time); a copy."""
        key = (name, path, path.stat().st_mtime)
        if key not in self._described:
            model = ExportedModel(path, device=torch.device("cpu"), threads=1, backend="onnxruntime")
            self._described[key] = describe(name, model, bundled=bundled)
        return dict(self._described[key])

    def _describe_version(self, v: ModelVersion, current: int) -> dict:
        registered = datetime.fromtimestamp(v.path.stat().st_mtime, timezone.utc).isoformat()
        return {**self._describe(v.name, v.path, False), "version": v.version, "ref": v.ref,
                "current": v.version == current, "registered": registered,
                "card": self.paths.model_card(v.name, v.version).is_file()}

    def describe_all(self) -> list[dict]:
        """Every model a camera can use: bundled ones, and each registered name's current version with the
        number of its ``versions`` (0 for bundled ones)."""
        scanned, out = self._scan(), []
        for name in self.names():
            if name in scanned:
                versions = scanned[name]
                current = self._current(name, versions)
                out.append({**self._describe_version(ModelVersion(name, current, versions[current]), current),
                            "versions": len(versions)})
            else:
                out.append({**self._describe(name, self.path(name), True), "versions": 0})
        return out

    def describe_name(self, ref: str) -> dict:
        """One model: a bundled one; a registered name's current version with every version (``versions``,
        oldest first); or one version (``name@N``)."""
        m = REF.match(ref or "")
        versions = self._scan().get(m["name"]) if m else None
        if not versions:
            if ref in bundled_models() or ref == self.default:
                return {**self._describe(ref, self.path(ref), True), "versions": []}
            raise UnknownModel(f"unknown model {ref!r}; known: {self.names()}")
        name, current = m["name"], self._current(m["name"], versions)
        if m["version"]:
            version = int(m["version"])
            if version not in versions:
                raise UnknownModel(f"model {name!r} has no version {version}; versions: {sorted(versions)}")
            return self._describe_version(ModelVersion(name, version, versions[version]), current)
        listed = [self._describe_version(ModelVersion(name, v, p), current) for v, p in sorted(versions.items())]
        return {**listed[sorted(versions).index(current)], "versions": listed}

    def card(self, ref: str) -> str:
        """The model card of a registered version (a fitted one has one), as Markdown."""
        found = self.lookup(ref)
        if found is None:
            self.path(ref)
            raise UnknownModel(f"model {ref!r} is bundled; its card is models/bundled/{ref}.md in the source")
        path = self.paths.model_card(found.name, found.version)
        if not path.is_file():
            raise UnknownModel(f"model {found.ref} has no model card (it was uploaded, not fitted by the service)")
        return path.read_text()

    # -- changing ----------------------------------------------------------------------------------
    def add(self, name: str, upload: Path, card: str | None = None) -> dict:
        """Register ``upload`` (moved into the registry) as the next version of ``name`` after loading it
        once, and make it current; ``card`` (a fit's model card) is kept beside it, saying so."""
        if not NAME.match(name or ""):
            raise InvalidModel(f"model name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        if name in bundled_models():
            raise ModelConflict(f"{name!r} is a bundled model; it cannot be replaced (register under another name)")
        model = self._load_upload(upload)
        with self._lock:
            versions = self._scan().get(name, {})
            for v, p in sorted(versions.items()):
                if file_sha256(p) == model.sha256:
                    raise ModelConflict(f"this file is already version {v} of {name!r}; make it current with "
                                        f"POST /v1/models/{name}/rollback?version={v}")
            version = max(versions, default=0) + 1
            target = self.paths.model_version(name, version)
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(upload), target)
            os.chmod(target, 0o644)
            if card is not None:
                note = registered_note(name, version)
                write_atomic(self.paths.model_card(name, version), f"{card.rstrip()}\n\n{note}\n")
            self._set_current(name, version)
        model.path = target
        return {**describe(name, model, bundled=False), "version": version, "ref": f"{name}@{version}",
                "current": True, "versions": len(versions) + 1, "cameras": self._announce(name)}

    def rollback(self, name: str, version: int | None = None) -> dict:
        """Make an older version of ``name`` current again (``version``; default the one before the current
        one); the cameras on ``name`` follow. The newer versions are kept (a later rollback goes forward)."""
        with self._lock:
            versions = self._scan().get(name)
            if not versions:
                if name in bundled_models():
                    raise ModelConflict(f"{name!r} is a bundled model; it has no versions")
                raise UnknownModel(f"unknown model {name!r}; known: {self.names()}")
            current = self._current(name, versions)
            if version is None:
                older = [v for v in versions if v < current]
                if not older:
                    raise ModelConflict(f"model {name!r} has no version before {current} (versions "
                                        f"{sorted(versions)}); give ?version=")
                version = max(older)
            elif version not in versions:
                raise UnknownModel(f"model {name!r} has no version {version}; versions: {sorted(versions)}")
            self._set_current(name, version)
        log.info("model %s: version %d is current (was %d)", name, version, current)
        return {**self.describe_name(name), "previous": current, "cameras": self._announce(name)}

    def _set_current(self, name: str, version: int) -> None:
        write_atomic(self.paths.model_current(name), json.dumps({"current": version}))

    def _announce(self, name: str) -> list[str]:
        """Tell the listeners that ``name`` has a new current version; the cameras they moved. The version
        is registered whatever a listener does, so a failing one is logged, not raised."""
        moved: list[str] = []
        for listener in self.listeners:
            try:
                moved += listener(name)
            except Exception as exc:
                log.warning("model %s: cameras could not follow its new version: %s", name, exc)
        return moved

    def files(self, ref: str) -> list[Path]:
        """The files :meth:`remove` would delete for ``ref`` (all versions of a name, or one version)."""
        if ref in bundled_models():
            raise ModelConflict(f"{ref!r} is a bundled model; it cannot be deleted")
        m = REF.match(ref or "")
        versions = self._scan().get(m["name"]) if m else None
        if not versions:
            raise UnknownModel(f"unknown model {ref!r}")
        if m["version"] is None:
            return [p for _, p in sorted(versions.items())]
        if int(m["version"]) not in versions:
            raise UnknownModel(f"model {m['name']!r} has no version {m['version']}; versions: {sorted(versions)}")
        return [versions[int(m["version"])]]

    def remove(self, ref: str) -> list[Path]:
        """Delete a registered name (every version) or one version ``name@N``, with their cards; the caller
        checks that no camera uses them. When the current version goes, the newest one left is current."""
        with self._lock:
            doomed = self.files(ref)
            name = REF.match(ref)["name"]
            versions = self._scan()[name]
            current = self._current(name, versions)
            for version, path in versions.items():
                if path in doomed:
                    path.unlink(missing_ok=True)
                    self.paths.model_card(name, version).unlink(missing_ok=True)
            if versions[current] in doomed:
                self.paths.model_current(name).unlink(missing_ok=True)
        return doomed

    def _load_upload(self, upload: Path) -> ExportedModel:
        """Load an upload as the engine would (its device and model threads) and hold it to the contract's
        bounds and the engine's per-model budget; InvalidModel saying why otherwise."""
        def hide(text: str) -> str:  # the upload's temporary file is no business of the client's
            return text.replace(str(upload), "the upload").replace(upload.name, "the upload")
        cfg = self.engine
        try:
            model = ExportedModel(upload, device=pick_device(cfg.device), threads=cfg.model_threads or
                                  default_threads()[1], backend=cfg.backend, precision=cfg.precision,
                                  cache_dir=cfg.cache_dir)
            check_budget(model, cfg.model_budget_ms)
        except Invalid as exc:  # our own checks: bounds, metadata, budget
            raise InvalidModel(f"not a usable amvad model: {hide(exc.message)[:500]}") from None
        except Exception as exc:  # the backends and pydantic raise many kinds; all mean "not usable"
            reason = hide(str(exc)).splitlines()[0][:300]
            raise InvalidModel(f"not a usable amvad model ({type(exc).__name__}: {reason})") from None
        return model
