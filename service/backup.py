"""Backup and restore of the state directory (``StatePaths``) while the service runs.

An archive is a gzipped tar: ``config.yaml`` (the service settings as they were set, secrets included but
the API key), ``state/...`` laid out as the state directory (the event database as an SQLite online-backup
snapshot, never a copy of a file being written; camera list, webhooks, users, registered models, running
statistics, evidence unless left out), and ``manifest.json`` last: it carries the size and SHA-256 of every
member before it, so the archive is written in one pass and can be streamed while it is made. Recordings,
fit jobs and uploads are not backed up (working files, not state to restore).

Restore goes into an empty state directory only, and all at once: the archive is checked (names, types,
manifest hashes, database integrity) while it is unpacked into a folder beside the target, which is then
renamed onto it; on any error nothing is left behind.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import IO, Any

import yaml
from pydantic import SecretStr

from amvad.runtime.errors import Conflict, Invalid, Unavailable
from amvad.runtime.files import atomic_path, write_atomic

from .config import ServiceSettings
from .state import StatePaths

FORMAT = 1  # the archive layout; a newer one is refused by an older amvad
MANIFEST, CONFIG, STATE = "manifest.json", "config.yaml", "state"
CHUNK = 1 << 20
MAX_SMALL = 64 << 20  # manifest and config are read into memory: an archive claiming more is refused
BUSY_TIMEOUT_S = 10.0
GZIP_LEVEL = 1  # fast: most of an archive is video, JPEG and model weights, which hardly compress


class BadArchive(Invalid):
    """Not an amvad backup, damaged, changed since it was made, or with a member that would land outside
    the state directory (HTTP 422; ``amvad restore`` exits with status 2)."""


class NotEmpty(Conflict):
    """Restore refuses a state directory that already holds something (HTTP 409)."""


@dataclass(frozen=True)
class Progress:
    """How far a backup or restore is; totals are None while unknown (a restore learns them at the end)."""
    files: int
    bytes: int
    total_files: int | None = None
    total_bytes: int | None = None


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class Member:
    """One archive member: small files are read once, into ``data``; large ones stream from ``path``
    (``listed_bytes``: their size when listed, for progress)."""
    name: str
    mtime: float
    private: bool  # mode 0600 (credentials) rather than 0644
    data: bytes | None = None
    path: Path | None = None
    listed_bytes: int = 0


def amvad_version() -> str:
    try:
        return metadata.version("amvad")
    except metadata.PackageNotFoundError:
        return "unknown"


def settings_as_config(settings: ServiceSettings) -> dict:
    """The settings that were set (YAML, environment, flags) as a YAML-ready dict: defaults stay out, so a
    newer amvad's defaults apply after a restore; ``state_dir`` is the restore's and ``api_key`` stays out."""
    return _plain(settings.model_dump(exclude_unset=True, exclude={"api_key", "state_dir"}))


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


class Snapshot:
    """What one backup holds, taken when it is made: databases copied with SQLite's online backup into a
    temporary folder, small files read into memory, models and evidence listed (read once, while the
    archive is written: evidence clips only grow, so a clip being written is taken up to that point).
    Use as a context manager; :meth:`write` the archive once."""

    def __init__(self, paths: StatePaths, *, evidence: bool = True, config: dict | None = None) -> None:
        if not paths.root.is_dir():
            raise FileNotFoundError(f"state directory {paths.root} does not exist")
        self.paths, self.evidence = paths, evidence
        self._tmp = tempfile.TemporaryDirectory(prefix="amvad-backup-")
        self.contents: dict[str, int] = {}
        self.members: list[Member] = []
        try:
            if config is not None:
                self.members.append(Member(CONFIG, time.time(), True, data=yaml.safe_dump(config).encode()))
            self._take()
        except BaseException:
            self._tmp.cleanup()
            raise

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    def _name(self, path: Path) -> str:
        return f"{STATE}/{path.relative_to(self.paths.root).as_posix()}"

    def _small(self, path: Path) -> Member | None:
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                return Member(self._name(path), st.st_mtime, not st.st_mode & 0o077, data=fh.read())
        except FileNotFoundError:  # removed since it was listed (a camera deleted): not in this backup
            return None

    def _take(self) -> None:
        p = self.paths
        if p.events_db.is_file():  # the database first: evidence newer than it is re-attached at start
            copy = Path(self._tmp.name) / p.events_db.name
            self.contents["events"] = copy_database(p.events_db, copy)
            self.members.append(Member(self._name(p.events_db), time.time(), False, path=copy))
        cameras, webhooks, users = self._small(p.api_cameras), self._small(p.webhooks), self._small(p.users)
        stats = [m for m in map(self._small, _files(p.stats_dir)) if m]
        models = [m for m in map(self._large, _files(p.models)) if m]
        folders = _dirs(p.evidence_root) if self.evidence else []
        evidence = [m for d in folders for m in map(self._large, _files(d)) if m]
        self.members += [m for m in (cameras, webhooks, users) if m] + stats + models + evidence
        self.contents |= {"cameras": _count(cameras, "cameras"), "webhooks": _count(webhooks, None),
                          "models": sum(m.name.endswith(".onnx") for m in models), "statistics": len(stats),
                          "evidence_files": len(evidence)}

    def _large(self, path: Path) -> Member | None:
        try:
            st = path.stat()
        except FileNotFoundError:  # evidence removed by retention since it was listed
            return None
        return Member(self._name(path), st.st_mtime, not st.st_mode & 0o077, path=path, listed_bytes=st.st_size)

    @property
    def total_bytes(self) -> int:
        return sum(len(m.data) if m.data is not None else m.listed_bytes for m in self.members)

    def write(self, out: IO[bytes], progress: ProgressFn | None = None) -> dict:
        """The archive (tar.gz) into ``out``, which need not be seekable; returns the manifest written last."""
        total_files, total_bytes = len(self.members), self.total_bytes
        done: dict[str, dict] = {}
        nbytes = 0
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w|") as tar:
            for m in self.members:
                try:
                    size, digest = _add(tar, m)
                except FileNotFoundError:  # evidence removed by retention since it was listed
                    continue
                done[m.name] = {"bytes": size, "sha256": digest}
                nbytes += size
                if progress:
                    progress(Progress(len(done), nbytes, total_files, max(total_bytes, nbytes)))
            manifest = {"format": FORMAT, "amvad": amvad_version(),
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "evidence": self.evidence, "contents": self.contents, "members": done}
            data = json.dumps(manifest, indent=1).encode()
            _add(tar, Member(MANIFEST, time.time(), False, data=data))
        return manifest


def _files(folder: Path) -> list[Path]:
    """Regular files of a folder, without the temporary ones of atomic writes (dot-names)."""
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.is_symlink() and not f.name.startswith("."))


def _dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.is_symlink() and not d.name.startswith("."))


def _count(member: Member | None, key: str | None) -> int:
    if member is None:
        return 0
    try:
        data = json.loads(member.data)
        return len(data[key] if key else data)
    except (ValueError, KeyError, TypeError):
        return 0


def copy_database(src: Path, dst: Path) -> int:
    """Copy an SQLite database with the online backup API in one step (one read transaction, so a
    consistent snapshot; the service's writers are not blocked in WAL mode) and check the copy. Returns
    its number of events (0 without an events table); Unavailable when it cannot be read."""
    try:
        source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            target = sqlite3.connect(dst)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file; the service sets WAL
                check = target.execute("PRAGMA integrity_check").fetchall()
                has_events = target.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'")
                events = target.execute("SELECT COUNT(*) FROM events").fetchone()[0] if has_events.fetchone() else 0
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise Unavailable(f"cannot copy the database {src.name}: {exc}") from None
    if check != [("ok",)]:
        raise Unavailable(f"the database {src.name} fails its integrity check: {check[:3]}")
    return int(events)


class _Hashing:
    """Reads at most ``size`` bytes of ``fh`` and hashes what it hands out (tarfile reads it once)."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self.fh, self.left, self.sha = fh, size, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        self.sha.update(data)
        return data


def _add(tar: tarfile.TarFile, m: Member) -> tuple[int, str]:
    info = tarfile.TarInfo(m.name)
    info.mtime, info.mode = int(m.mtime), 0o600 if m.private else 0o644
    if m.data is not None:
        info.size = len(m.data)
        tar.addfile(info, io.BytesIO(m.data))
        return info.size, hashlib.sha256(m.data).hexdigest()
    with open(m.path, "rb") as fh:
        info.size = os.fstat(fh.fileno()).st_size  # a clip still being written is taken up to here
        reader = _Hashing(fh, info.size)
        tar.addfile(info, reader)
    return info.size, reader.sha.hexdigest()


def backup_to_file(paths: StatePaths, out: Path, *, evidence: bool = True, config: dict | None = None,
                   progress: ProgressFn | None = None) -> dict:
    """Write the archive to ``out`` (mode 0600: it holds camera credentials and webhook secrets), in one
    step: a failed backup leaves no partial file. Returns the manifest."""
    with Snapshot(paths, evidence=evidence, config=config) as snap, atomic_path(out, mode=0o600) as tmp:
        with open(tmp, "wb") as fh:
            return snap.write(fh, progress)


# -- restore ----------------------------------------------------------------------------------------------
def check_empty(state_dir: Path) -> None:
    if state_dir.exists() and not state_dir.is_dir():
        raise NotEmpty(f"state directory {state_dir} is a file; restore goes into an empty or new folder")
    if state_dir.exists() and any(state_dir.iterdir()):
        raise NotEmpty(f"state directory {state_dir} is not empty; restore only goes into an empty or new one")


def restore(archive: Path, state_dir: Path, progress: ProgressFn | None = None) -> dict:
    """Unpack ``archive`` into the empty (or new) ``state_dir``; returns what was restored. The service
    config it carried goes to ``StatePaths.restored_config`` with ``state_dir`` set to this folder."""
    target = Path(state_dir).expanduser().resolve()
    check_empty(target)
    if not Path(archive).is_file():
        raise FileNotFoundError(f"backup archive {archive} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    try:
        manifest, config, seen = _unpack(Path(archive), StatePaths(work), progress)
        _verify(manifest, seen)
        _check_databases(StatePaths(work))
        restored_config = None
        if config is not None:
            restored_config = StatePaths(target).restored_config
            write_atomic(StatePaths(work).restored_config,
                         yaml.safe_dump({**_config_dict(config), "state_dir": str(target)}), mode=0o600)
        try:
            os.rename(work, target)  # onto an empty folder too: one step, and it fails if one appeared
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise NotEmpty(f"state directory {target} is not empty any more; nothing was restored") from None
            raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {"state_dir": str(target), "files": len(seen), "bytes": sum(s["bytes"] for s in seen.values()),
            "created": manifest.get("created"), "amvad": manifest.get("amvad"),
            "evidence": manifest.get("evidence"), "contents": manifest.get("contents", {}),
            "config": None if restored_config is None else str(restored_config)}


def _config_dict(data: bytes) -> dict:
    try:
        config = yaml.safe_load(data) or {}
    except yaml.YAMLError as exc:
        raise BadArchive(f"the archive's {CONFIG} is not YAML: {exc}") from None
    if not isinstance(config, dict):
        raise BadArchive(f"the archive's {CONFIG} is not a mapping")
    return config


def _unpack(archive: Path, layout: StatePaths, progress: ProgressFn | None) -> tuple[dict, bytes | None, dict]:
    """Every member checked and written under ``layout.root``; (manifest, config bytes, {name: size/hash})."""
    manifest = config = None
    seen: dict[str, dict] = {}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            names: set[str] = set()
            for member in tar:
                if member.name in names:
                    raise BadArchive(f"archive member {member.name!r} appears twice")
                names.add(member.name)
                if not member.isreg():
                    raise BadArchive(f"archive member {member.name!r} is not a regular file (links, folders and "
                                     f"devices are refused)")
                if member.name in (MANIFEST, CONFIG):
                    if member.size > MAX_SMALL:
                        raise BadArchive(f"archive member {member.name!r} is too large ({member.size} bytes)")
                    data = tar.extractfile(member).read()
                    if member.name == MANIFEST:
                        manifest = _parse_manifest(data)
                    else:
                        config = data
                        seen[CONFIG] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                    continue
                dest = member_path(member.name, layout)
                seen[member.name] = _extract(tar, member, dest)
                if progress:
                    progress(Progress(len(seen), sum(s["bytes"] for s in seen.values())))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk, not the archive (a damaged gzip stream is an OSError without errno)
        raise BadArchive(f"{archive} is not a readable amvad backup (tar.gz): {exc}") from None
    if manifest is None:
        raise BadArchive(f"{archive} has no {MANIFEST}: not an amvad backup, or cut off")
    return manifest, config, seen


def _parse_manifest(data: bytes) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError:
        raise BadArchive(f"the archive's {MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("members"), dict):
        raise BadArchive(f"the archive's {MANIFEST} lists no members")
    if not isinstance(manifest.get("format"), int) or manifest["format"] > FORMAT:
        raise BadArchive(f"archive format {manifest.get('format')!r} is not one this amvad reads (up to {FORMAT}); "
                         f"it was made by amvad {manifest.get('amvad')}")
    return manifest


def member_path(name: str, layout: StatePaths) -> Path:
    """Where a ``state/...`` member goes under ``layout.root``: only the places ``StatePaths`` names for what
    a backup holds; BadArchive for anything else (``..``, absolute names, unknown files)."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or "\\" in name or any(part in ("..", ".", "") for part in name.split("/")):
        raise BadArchive(f"archive member {name!r} points outside the state directory")
    if len(pure.parts) < 2 or pure.parts[0] != STATE or any(p.startswith(".") for p in pure.parts):
        raise BadArchive(f"archive member {name!r} is not part of an amvad state directory")
    dest = layout.root.joinpath(*pure.parts[1:])
    if (dest in (layout.events_db, layout.api_cameras, layout.webhooks, layout.users)
            or dest.parent in (layout.models, layout.stats_dir) or dest.parent.parent == layout.evidence_root):
        return dest
    raise BadArchive(f"archive member {name!r} is not part of an amvad state directory")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> dict:
    dest.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if not member.mode & 0o077 else 0o644
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    sha, size, src = hashlib.sha256(), 0, tar.extractfile(member)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(CHUNK):
            sha.update(chunk)
            out.write(chunk)
            size += len(chunk)
    os.utime(dest, (member.mtime, member.mtime))
    return {"bytes": size, "sha256": sha.hexdigest()}


def _verify(manifest: dict, seen: dict) -> None:
    listed = manifest["members"]
    missing, extra = sorted(set(listed) - set(seen)), sorted(set(seen) - set(listed))
    if missing or extra:
        raise BadArchive(f"the archive does not match its manifest: missing {missing[:5]}, not listed {extra[:5]}")
    for name, got in seen.items():
        want = listed[name]
        if not isinstance(want, dict) or want.get("sha256") != got["sha256"] or want.get("bytes") != got["bytes"]:
            raise BadArchive(f"archive member {name!r} does not match its manifest entry (damaged or changed)")


def _check_databases(layout: StatePaths) -> None:
    if not layout.events_db.is_file():
        return
    try:
        db = sqlite3.connect(f"{layout.events_db.as_uri()}?mode=ro", uri=True)
        try:
            check = db.execute("PRAGMA integrity_check").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise BadArchive(f"the archive's event database cannot be read: {exc}") from None
    if check != [("ok",)]:
        raise BadArchive(f"the archive's event database fails its integrity check: {check[:3]}")
