"""A camera's running statistics on disk (``<state_dir>/cameras/<id>.json``): saved every
``ingest.stats_save_s`` while it publishes and when it stops, restored at its next start when they belong
to the very model it runs (same file content)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from amvad.runtime.exported_model import ExportedModel
from amvad.runtime.files import write_atomic
from amvad.runtime.scoring import RunningStats
from amvad.runtime.stream import Stream

from .sinks import Published

log = logging.getLogger("amvad.cameras")
RETRY_S = 5.0


def load_stats(path: Path, model: ExportedModel, camera: str) -> RunningStats | None:
    """Saved stats of this camera with this model, or None (start from the model's training statistics)
    when there are none, they belong to another model, or the file is unreadable (logged)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved["model_sha256"] == model.sha256:
            return RunningStats.from_dict(saved["stats"])
        log.info("camera %s: saved stats belong to another model; starting from training stats", camera)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("camera %s: ignoring unreadable stats file %s: %s", camera, path, exc)
    return None


def save_stats(path: Path, stream: Stream, model_name: str) -> None:
    """Raises OSError when the file cannot be written (the caller's error boundary counts it)."""
    meta = stream.model.meta
    write_atomic(path, json.dumps({"model_sha256": stream.model.sha256, "model": model_name, "method": meta.method,
                                   "components": [c.name for c in meta.components],
                                   "stats": stream.scorer.stats.to_dict()}))


class StatsSink:
    """Saves the running statistics every ``every_s`` seconds of publishing; a failed save (full or
    read-only disk) is tried again after ``RETRY_S``."""
    name = "stats"

    def __init__(self, path: Path, stream: Callable[[], Stream], model_name: Callable[[], str], every_s: float) -> None:
        self.path, self._stream, self._model_name, self.every_s = path, stream, model_name, every_s
        self._last = time.monotonic()

    def publish(self, p: Published) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self.save()

    def save(self) -> None:
        try:
            save_stats(self.path, self._stream(), self._model_name())
        except OSError:
            self._last = time.monotonic() - self.every_s + RETRY_S
            raise
        self._last = time.monotonic()
