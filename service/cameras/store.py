"""Cameras added through the API, kept on disk so they survive a restart.

The file (``<state_dir>/api_cameras.json``, next to the per-camera running statistics) holds the real
URLs, credentials included, so it is written with mode 0600 and atomically replaced; its content never
goes to logs or responses. Cameras declared in the YAML config are not stored: the config owns them.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from pydantic import ValidationError

from amvad.runtime.errors import AmvadError
from amvad.runtime.files import write_atomic

from ..config import CameraConfig

log = logging.getLogger("amvad.cameras")


class CameraStoreError(AmvadError, OSError):
    """The camera list could not be written (HTTP 507; the camera is not added or not changed)."""
    status = 507


class CameraStore:
    """Id -> camera config of the API-added cameras, mirrored to a 0600 JSON file on every change."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._cameras: dict[str, CameraConfig] = {}
        self._lock = threading.Lock()

    def load(self) -> list[CameraConfig]:
        """Read the stored cameras; unreadable entries are skipped with a warning naming only the id."""
        try:
            raw = json.loads(self.path.read_text())
            entries = raw["cameras"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable camera list %s (%s)", self.path, type(exc).__name__)
            return []
        with self._lock:
            for entry in entries if isinstance(entries, list) else []:
                try:
                    cfg = CameraConfig.model_validate(entry)
                except ValidationError:
                    cam_id = entry.get("id") if isinstance(entry, dict) else None
                    log.warning("ignoring stored camera %r: invalid entry", cam_id)
                    continue
                self._cameras[cfg.id] = cfg
            return list(self._cameras.values())

    def put(self, cfg: CameraConfig) -> None:
        with self._lock:
            before = self._cameras.get(cfg.id)
            self._cameras[cfg.id] = cfg
            try:
                self._write()
            except OSError:
                if before is None:
                    del self._cameras[cfg.id]
                else:
                    self._cameras[cfg.id] = before
                raise

    def has(self, camera_id: str) -> bool:
        return camera_id in self._cameras

    def discard(self, camera_id: str) -> None:
        with self._lock:
            if self._cameras.pop(camera_id, None) is not None:
                self._write()

    def _write(self) -> None:
        entries = [{**c.model_dump(mode="json", exclude={"url"}), "url": c.url.get_secret_value()}
                   for c in self._cameras.values()]
        try:
            write_atomic(self.path, json.dumps({"cameras": entries}), mode=0o600)
        except OSError as exc:
            raise CameraStoreError(f"cannot save the camera list to {self.path}: {exc.strerror or exc}") from None
