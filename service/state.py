"""The state directory's layout, named once (as Frigate's ``const.py`` names its folders). Every part of
the service that keeps files asks :class:`StatePaths` where they go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StatePaths:
    """``<state_dir>/``: ``events.sqlite3`` (events), ``events/<camera>/`` (their clips and snapshots),
    ``cameras/<camera>.json`` (running statistics), ``api_cameras.json``, ``webhooks.json``, ``users.json``,
    ``models/`` (registered models: ``<name>@<N>.onnx`` per version, its card ``<name>@<N>.md``, the
    current version ``<name>.json``), ``cache/`` (compiled models), ``recordings/<id>/``, ``fits/<job>/``,
    ``uploads/`` (clip files while their job lives), ``config.restored.yaml`` (after ``amvad restore``)."""
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def events_db(self) -> Path:
        return self.root / "events.sqlite3"

    def evidence(self, camera: str) -> Path:
        """A camera's event clips and snapshots (kept after the camera is deleted)."""
        return self.root / "events" / camera

    @property
    def evidence_root(self) -> Path:
        return self.root / "events"

    @property
    def stats_dir(self) -> Path:
        """Every camera's running statistics, one JSON file each."""
        return self.root / "cameras"

    def camera_stats(self, camera: str) -> Path:
        return self.stats_dir / f"{camera}.json"

    @property
    def api_cameras(self) -> Path:
        return self.root / "api_cameras.json"

    @property
    def users(self) -> Path:
        """Users, roles, password hashes and API key hashes (mode 0600; ``amvad user``, ``/v1/users``)."""
        return self.root / "users.json"

    @property
    def webhooks(self) -> Path:
        return self.root / "webhooks.json"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_version(self, name: str, version: int) -> Path:
        """Version ``version`` (1, 2, ...) of a registered model. Versions sit side by side in ``models/``
        (no folder per name), so a backup and a restore carry them as they carry any registered model."""
        return self.models / f"{name}@{version}.onnx"

    def model_card(self, name: str, version: int) -> Path:
        return self.models / f"{name}@{version}.md"

    def model_current(self, name: str) -> Path:
        """Which version of ``name`` is current (``{"current": N}``); without it the newest is."""
        return self.models / f"{name}.json"

    @property
    def cache(self) -> Path:
        """Compiled models and flow graphs (rebuilt when missing; not worth a backup)."""
        return self.root / "cache"

    @property
    def recordings(self) -> Path:
        return self.root / "recordings"

    @property
    def fits(self) -> Path:
        return self.root / "fits"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def restored_config(self) -> Path:
        """The service config a restored backup carried, with ``state_dir`` pointing here (``amvad restore``)."""
        return self.root / "config.restored.yaml"
