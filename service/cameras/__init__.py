"""Live cameras: one :class:`Camera` per source (``camera.py``: its threads; ``source.py``: ingest;
``sinks.py`` and ``events.py``: where its results go; ``stats.py``: running statistics on disk), the
:class:`CameraManager` that holds them (``manager.py``) and the store of API-added cameras (``store.py``)."""

from .camera import Camera, CameraNotLive
from .manager import CameraManager, CameraModelError, DuplicateCamera, UnknownCamera
from .store import CameraStore, CameraStoreError

__all__ = ["Camera", "CameraManager", "CameraModelError", "CameraNotLive", "CameraStore", "CameraStoreError",
           "DuplicateCamera", "UnknownCamera"]
