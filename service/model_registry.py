"""The models a service can give its cameras: the bundled ones (``ped2``) and those registered by name in
``StatePaths.models`` as ``<name>.onnx`` (uploaded with ``POST /v1/models`` or made by a fit job). A model
is only registered once ONNX Runtime has loaded it, its amvad metadata is within the contract's bounds and
one frame of it fits the engine's per-model time budget (measured on the engine's device)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import torch

from models.registry import bundled_models, resolve_model
from runtime.budget import check_budget
from runtime.device import pick_device
from runtime.engine import EngineConfig, default_threads
from runtime.errors import Conflict, Invalid, NotFound
from runtime.exported_model import ExportedModel

from .config import ServiceSettings
from .state import StatePaths

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UnknownModel(NotFound):
    """A model name that is neither bundled nor registered (HTTP 404; 422 where a camera names it)."""


class InvalidModel(Invalid):
    """An upload that is not a usable amvad model (bad metadata, settings out of bounds, over the engine's
    time budget), or a bad model name (HTTP 422)."""


class ModelConflict(Conflict):
    """A name already taken, a bundled model, or a model in use by cameras (HTTP 409)."""


def describe(name: str, model: ExportedModel, bundled: bool) -> dict:
    m = model.meta
    return {"name": name, "bundled": bundled, "method": m.method, "height": m.height, "width": m.width,
            "channels": m.channels, "clip_len": m.clip_len, "threshold": m.threshold,
            "components": [c.name for c in m.components], "sha256": model.sha256,
            "bytes": model.path.stat().st_size, "training": {k: v for k, v in m.training.items() if k != "config"}}


class ModelRegistry:
    """Name -> model file. ``default`` is the service's own model (a bundled name or a path); ``engine``:
    the engine's settings, whose device, model threads and per-model budget an upload is measured with
    (default :class:`EngineConfig`'s). ``paths`` may still be a bare state directory."""

    def __init__(self, paths: StatePaths | Path, default: str, engine: EngineConfig | None = None) -> None:
        self.paths = paths if isinstance(paths, StatePaths) else StatePaths(Path(paths))
        self.dir = self.paths.models
        self.default = default
        self.engine = engine or EngineConfig()
        self._lock = threading.Lock()
        self._described: dict[tuple[str, Path, float], dict] = {}  # (name, file, mtime) -> description

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ModelRegistry:
        return cls(settings.paths, settings.model, settings.engine)

    def registered(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self.dir.glob("*.onnx"))} if self.dir.is_dir() else {}

    def path(self, name: str | None) -> Path:
        """The file of a model name; None is the service's default model."""
        if name is None:
            return resolve_model(self.default)
        registered = self.registered()
        if name in registered:
            return registered[name]
        if name in bundled_models() or name == self.default:
            return resolve_model(name)
        known = sorted({*bundled_models(), *registered})
        raise UnknownModel(f"unknown model {name!r}; known: {known}")

    def names(self) -> list[str]:
        return sorted({*bundled_models(), *self.registered()})

    def describe_all(self) -> list[dict]:
        """Every model a camera can use (bundled and registered), loaded once on the CPU to describe it."""
        bundled, out = bundled_models(), []
        for name in self.names():
            path = self.path(name)
            key = (name, path, path.stat().st_mtime)
            if key not in self._described:
                model = ExportedModel(path, device=torch.device("cpu"), threads=1, backend="onnxruntime")
                self._described[key] = describe(name, model, bundled=name in bundled)
            out.append(self._described[key])
        return out

    def add(self, name: str, upload: Path) -> dict:
        """Register ``upload`` (moved into the registry) as ``name`` after loading it once."""
        if not NAME.match(name or ""):
            raise InvalidModel(f"model name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        model = self._load_upload(upload)
        with self._lock:
            if name in bundled_models() or name in self.registered():
                raise ModelConflict(f"a model named {name!r} already exists")
            self.dir.mkdir(parents=True, exist_ok=True)
            target = self.dir / f"{name}.onnx"
            shutil.move(str(upload), target)
            os.chmod(target, 0o644)
        model.path = target
        return describe(name, model, bundled=False)

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

    def remove(self, name: str) -> Path:
        """Delete a registered model's file (the caller checks that no camera uses it)."""
        with self._lock:
            if name in bundled_models():
                raise ModelConflict(f"{name!r} is a bundled model; it cannot be deleted")
            path = self.registered().get(name)
            if path is None:
                raise UnknownModel(f"unknown model {name!r}")
            path.unlink()
            return path
