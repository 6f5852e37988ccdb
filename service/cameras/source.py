"""A camera's source: one ingest thread that decodes it (PyAV), reconnects with backoff and jitter, paces
file replays, hands each frame to its taps (recordings, evidence pre-roll; each in the camera's error
boundary) and puts it in a bounded drop-oldest queue, so capture never blocks. A file replayed as fast
as possible (``replay_fps: 0``) blocks instead: a file has no live deadline and every frame should be
scored.

States: connecting -> streaming; reconnecting after a failure or stall; failed when the source cannot
work (a missing file). Reasons and URLs are always redacted.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable

from amvad.runtime.redact import redact
from amvad.runtime.types import Frame
from amvad.runtime.video import DecodeError, file_path, is_file_source, iter_frames, open_source, stream_fps

from ..config import IngestConfig
from ..metrics import Metrics
from .sinks import Boundary

log = logging.getLogger("amvad.cameras")
CONNECTING, RECONNECTING, STREAMING, FAILED = "connecting", "reconnecting", "streaming", "failed"


class FrameQueue:
    """Bounded queue that drops the oldest frame when full; returns how many it dropped."""

    def __init__(self, size: int) -> None:
        self._items: deque[Frame] = deque(maxlen=size)
        self._cv = threading.Condition()

    def put(self, frame: Frame, block_until: threading.Event | None = None) -> int:
        """Append ``frame``; when full, drop the oldest, or with ``block_until`` wait for room (or for
        that event, e.g. a stop request, which then discards ``frame``)."""
        with self._cv:
            while block_until is not None and len(self._items) == self._items.maxlen:
                if block_until.is_set():
                    return 0
                self._cv.wait(0.1)
            dropped = int(len(self._items) == self._items.maxlen)
            self._items.append(frame)
            self._cv.notify_all()
        return dropped

    def get(self, timeout: float) -> Frame | None:
        with self._cv:
            if not self._items:
                self._cv.wait(timeout)
            item = self._items.popleft() if self._items else None
            self._cv.notify_all()
            return item


FrameTap = Callable[[Frame, float], None]  # (frame, the source's measured fps)


class CameraSource:
    """``replay_fps()`` is read per frame (a PATCH changes it); ``taps`` are (name, tap) pairs, a list the
    camera may replace at any time."""

    def __init__(self, camera: str, url: str, cfg: IngestConfig, metrics: Metrics, boundary: Boundary,
                 replay_fps: Callable[[], float | None], stop: threading.Event) -> None:
        self.camera, self._url, self.cfg, self.metrics = camera, url, cfg, metrics
        self.boundary, self._replay_fps, self._stop = boundary, replay_fps, stop
        self.queue = FrameQueue(cfg.frame_queue)
        self.taps: list[tuple[str, FrameTap]] = []
        self.state, self.reason = CONNECTING, None
        self.decoded = self.drops = self.reconnects = 0
        self.last_frame_time: float | None = None
        self.fps = 0.0
        self.thread = threading.Thread(target=self._run, name=f"ingest-{camera}", daemon=True)

    @property
    def is_file(self) -> bool:
        return is_file_source(self._url)

    def _run(self) -> None:
        attempt, segment, next_id = 0, 0, 0
        while not self._stop.is_set():
            if self.is_file and not file_path(self._url).is_file():
                self._set_failed(f"no such file: {file_path(self._url).name}")
                return
            try:
                segment += 1
                reason, got, next_id = self._read(segment, next_id)
            except Exception as exc:  # a bug or an unforeseen decoder error: reconnect, never die
                log.exception("camera %s: ingest failed; reconnecting", self.camera)
                reason, got = f"{type(exc).__name__}: {exc}", 0
            if reason is None:  # stopped
                return
            attempt = 0 if got else attempt
            if self.is_file and got and reason == "end of stream":  # a file camera loops: start over at once
                continue
            self._retry_later(reason, attempt)
            attempt += 1

    def _read(self, segment: int, next_id: int) -> tuple[str | None, int, int]:
        """One connection: (why it ended, None when asked to stop; frames got; the next frame id)."""
        try:
            container = open_source(self._url, open_timeout=self.cfg.open_timeout_s,
                                    read_timeout=self.cfg.read_timeout_s)
        except DecodeError as exc:
            return str(exc), 0, next_id
        got = 0
        try:
            with container:
                native_fps = stream_fps(container)
                paced_fps, t0, paced = None, 0.0, 0  # pacing restarts when replay_fps changes (PATCH)
                for frame in iter_frames(container, source_id=self.camera, segment=segment, first_id=next_id,
                                         wall_clock=True):
                    if self._stop.is_set():
                        return None, got, next_id
                    replay = self._replay_fps()
                    fps = replay if replay is not None else native_fps
                    if self.is_file and fps > 0:  # replay files at their frame rate
                        if fps != paced_fps:
                            paced_fps, t0, paced = fps, time.monotonic(), 0
                        self._stop.wait(max(0.0, t0 + paced / fps - time.monotonic()))
                        paced += 1
                        frame = dataclasses.replace(frame, timestamp=time.time())  # "captured" now
                    self._on_frame(frame)
                    next_id, got = frame.frame_id + 1, got + 1
        except DecodeError as exc:
            return str(exc), got, next_id
        return "end of stream", got, next_id

    def _on_frame(self, frame: Frame) -> None:
        now = time.time()
        if self.last_frame_time is not None:
            dt = max(now - self.last_frame_time, 1e-3)
            self.fps = 1.0 / dt if self.fps == 0 else 0.9 * self.fps + 0.1 / dt
        self.last_frame_time = now
        self.decoded += 1
        for name, tap in self.taps:
            self.boundary.call(name, tap, frame, self.fps)
        if self.state != STREAMING:
            self.state, self.reason = STREAMING, None
            self.metrics.up.labels(self.camera).set(1)
        unpaced_file = self.is_file and self._replay_fps() == 0
        if self.queue.put(frame, block_until=self._stop if unpaced_file else None):
            self.drops += 1
            self.metrics.dropped.labels(self.camera, "queue_full").inc()

    def _retry_later(self, reason: str, attempt: int) -> None:
        if self._stop.is_set():
            return
        self.state, self.reason = RECONNECTING, redact(reason)
        self.metrics.up.labels(self.camera).set(0)
        cfg = self.cfg
        delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** attempt)
        delay *= 1 + cfg.backoff_jitter * random.uniform(-1, 1)
        log.warning("camera %s: %s; reconnecting in %.1f s", self.camera, self.reason, delay)
        self._stop.wait(delay)
        self.reconnects += 1
        self.metrics.reconnects.labels(self.camera).inc()

    def _set_failed(self, reason: str) -> None:
        self.state, self.reason = FAILED, redact(reason)
        self.metrics.up.labels(self.camera).set(0)
        log.error("camera %s failed: %s", self.camera, self.reason)
