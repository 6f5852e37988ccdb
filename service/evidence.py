"""Evidence of each anomaly event: an H.264 clip of the camera's own frames from ``pre_roll_s`` before
the event's start to ``post_roll_s`` after its end, and a JPEG of the peak frame with the heatmap overlay.

The camera's ingest thread hands every decoded frame to :meth:`EventEvidence.on_frame`, which only keeps
a short ring of (downscaled) frames and offers frames to the clip writers' bounded queues, so writing
clips never blocks ingest or inference; each clip is encoded in its own thread. Files live in
``<state_dir>/events/<camera>/``; retention (``retain_days``, ``max_storage_mb`` per camera) removes the
oldest evidence first.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from amvad.runtime.types import AnomalyEvent, Frame

from .config import CameraEventsConfig
from .event_store import EventStore, UnknownEvent
from .h264 import H264Writer, playable_frames
from .heatmap import HeatScale

log = logging.getLogger("amvad.evidence")
MAX_WIDTH = 640  # evidence frames are kept and written at most this wide
RAISE_LATENCY_S = 3.0  # ample room for capture -> flow -> model -> score before an event is raised
# A clip's encoder: one thread (its clip's own; libx264's default starts 6 threads per encoder on 2 cores)
# and no lookahead, which holds frames: 6 MB per open clip instead of 15.5 MB (measured, 360x240). Every
# camera's event opens one, and 8 cameras' overlapping events kept 16 open at once in the soak.
CLIP_ENCODER = {"threads": 1, "tune": "zerolatency"}


def shrink(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    if w <= MAX_WIDTH:
        return pixels
    return cv2.resize(pixels, (MAX_WIDTH, round(h * MAX_WIDTH / w)), interpolation=cv2.INTER_AREA)


class ClipWriter(threading.Thread):
    """Encodes one event's frames (pre-roll first) until the capture time passes ``until``; ``on_done(self,
    frames written, the error that stopped it or None)`` runs in this thread at the end."""

    def __init__(self, path: Path, pre_roll: list[tuple[float, np.ndarray]], max_s: float, on_done) -> None:
        super().__init__(name=f"clip-{path.stem}", daemon=True)
        self.path, self._on_done = path, on_done
        self.until: float | None = None  # set at the event's end (+ post-roll)
        self._first = pre_roll[0][0] if pre_roll else None
        self._limit = max_s
        self._frames: queue.Queue[tuple[float, np.ndarray]] = queue.Queue(maxsize=len(pre_roll) + 256)
        self.dropped = 0
        for item in pre_roll:
            self._frames.put(item)

    @property
    def first_ts(self) -> float | None:
        """Capture time of the clip's first frame: its time 0 (None before it has one)."""
        return self._first

    def offer(self, ts: float, pixels: np.ndarray) -> None:
        try:
            self._frames.put_nowait((ts, pixels))
        except queue.Full:  # the disk is slower than the camera: the clip loses a frame, the camera none
            self.dropped += 1

    def _done_by(self, ts: float) -> bool:
        return ((self.until is not None and ts > self.until)
                or (self._first is not None and ts - self._first > self._limit))

    def run(self) -> None:
        writer, error = H264Writer(self.path, **CLIP_ENCODER), None
        try:
            while True:
                try:
                    ts, pixels = self._frames.get(timeout=1.0)
                except queue.Empty:
                    if self.until is not None and time.time() > self.until + 10:
                        break  # the camera stopped delivering frames: close with what there is
                    continue
                self._first = ts if self._first is None else self._first
                if self._done_by(ts):
                    break
                writer.write(ts, pixels)
            writer.close()
        except Exception as exc:  # a full or read-only disk: the fragments written so far still play
            error = exc
            with contextlib.suppress(Exception):
                writer.close()
        frames = writer.frames if playable_frames(self.path) else 0
        if not frames:
            self.path.unlink(missing_ok=True)
        self._on_done(self, frames, error)


class EventEvidence:
    """One camera's evidence: the pre-roll ring, the clips being written, the peak frame of the open event."""

    def __init__(self, camera: str, folder: Path, store: EventStore, cfg: CameraEventsConfig, on_bytes,
                 on_error=None) -> None:
        """``on_bytes()`` after evidence was added or removed; ``on_error(exc)`` when a clip failed in its
        own thread (the camera's error boundary counts it)."""
        self.camera, self.folder, self.store, self.cfg, self._on_bytes = camera, folder, store, cfg, on_bytes
        self._on_error = on_error
        self._ring: deque[tuple[float, np.ndarray]] = deque()
        self._writers: dict[int, ClipWriter] = {}
        self._lock = threading.Lock()
        self._peak: tuple[float, np.ndarray, np.ndarray] | None = None  # score, pixels, heatmap

    def on_frame(self, frame: Frame, fps: float) -> None:
        """Ingest thread: keep the frame for pre-roll and hand it to the clips being written."""
        if not self.cfg.clips:
            return
        small = shrink(frame.pixels)
        with self._lock:
            self._ring.append((frame.timestamp, small))
            # an event is raised min_duration_s after its start, plus the pipeline's latency (~1 s)
            horizon = frame.timestamp - self.cfg.pre_roll_s - self.cfg.min_duration_s - RAISE_LATENCY_S
            while self._ring and self._ring[0][0] < horizon:
                self._ring.popleft()
            for writer in self._writers.values():
                writer.offer(frame.timestamp, small)

    def on_start(self, event_id: int, start: float) -> None:
        """Publish thread: an event began at capture time ``start``; its clip starts pre-roll earlier."""
        self._peak = None
        if not self.cfg.clips:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            pre = [item for item in self._ring if item[0] >= start - self.cfg.pre_roll_s]
            writer = ClipWriter(self.folder / f"{event_id}.mp4", pre, self.cfg.max_clip_s,
                                lambda w, n, err, eid=event_id: self._clip_done(eid, w, n, err))
            self._writers[event_id] = writer
        writer.start()

    def on_frame_scored(self, score: float, pixels: np.ndarray, heatmap: np.ndarray | None) -> None:
        """Publish thread, while an event is open: remember the peak frame for the snapshot."""
        if heatmap is not None and (self._peak is None or score > self._peak[0]):
            self._peak = (score, pixels, heatmap)

    def snapshot(self, event_id: int, pixels: np.ndarray) -> None:
        """Publish thread: the frame as the camera saw it (a camera event's snapshot: the covered lens, the
        view it was turned to; no heatmap, its frames are not scored)."""
        if not self.cfg.clips:
            return
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(shrink(pixels), cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"could not encode the snapshot of event {event_id}")
        self._save_snapshot(event_id, jpeg.tobytes())

    def end_clip(self, event_id: int, end: float) -> None:
        """Publish thread: the event's clip runs on for the post-roll after ``end``."""
        with self._lock:
            writer = self._writers.get(event_id)
        if writer is not None:
            writer.until = end + self.cfg.post_roll_s

    def on_end(self, event_id: int, end: float, scale: HeatScale) -> None:
        """Publish thread, an anomaly event's end: the clip runs on for the post-roll; the snapshot of its
        peak frame with the heatmap is written now."""
        self.end_clip(event_id, end)
        if self._peak is not None and self.cfg.clips:
            _, pixels, heat = self._peak
            self._save_snapshot(event_id, scale.overlay(pixels, heat))
        self._peak = None

    def _save_snapshot(self, event_id: int, jpeg: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{event_id}.jpg"
        path.write_bytes(jpeg)
        self.store.set_evidence(event_id, snapshot=path.name, add_bytes=path.stat().st_size)
        self._on_bytes()

    def _clip_done(self, event_id: int, writer: ClipWriter, frames: int, error: BaseException | None) -> None:
        """The clip's thread, at its end: record the clip, then keep the camera's evidence within bounds."""
        with self._lock:
            self._writers.pop(event_id, None)
        if error is not None:
            log.warning("camera %s: clip of event %d stopped after %d frame(s): %s", self.camera, event_id, frames,
                        error)
            if self._on_error is not None:
                self._on_error(error)
        try:
            if frames:
                self.store.set_evidence(event_id, clip=writer.path.name, add_bytes=writer.path.stat().st_size,
                                        clip_start=writer.first_ts)
            self.enforce_retention()
            self._on_bytes()
        except Exception as exc:  # the database or the disk is failing: retention runs again after the next clip
            log.warning("camera %s: evidence bookkeeping of event %d deferred: %s", self.camera, event_id, exc)

    def enforce_retention(self) -> None:
        """Oldest evidence first: past ``retain_days``, then while over ``max_storage_mb``."""
        limit, oldest_kept = self.cfg.max_storage_mb * 2 ** 20, time.time() - self.cfg.retain_days * 86400
        used = self.store.evidence_bytes(self.camera)
        for event in self.store.with_evidence(self.camera):
            if event["start_ts"] >= oldest_kept and used <= limit:
                break
            for name in (event["clip"], event["snapshot"]):
                if name:
                    (self.folder / name).unlink(missing_ok=True)
            self.store.drop_evidence(event["id"])
            used -= event["evidence_bytes"]

    def writing(self, event_id: int) -> bool:
        with self._lock:
            return event_id in self._writers

    def stop(self) -> None:
        """End every clip at the last frame it got (service stopping or camera removed)."""
        with self._lock:
            writers = list(self._writers.values())
        for w in writers:
            w.until = 0.0
        for w in writers:
            w.join(5)


def repair_evidence(store: EventStore, root: Path) -> dict[str, int]:
    """At start-up, after a stop that was not clean (kill -9, power cut, a full disk): close the events
    left open, give the database the evidence files it never learned of (a clip only if it plays, else it
    is removed), and remove files of events the database does not know. ``root`` holds one folder per
    camera. Returns counts of what it did, for the log."""
    done = {"closed": 0, "attached": 0, "removed": 0}
    for event in store.interrupted():
        clip = root / event["camera"] / f"{event['id']}.mp4"
        end = max(event["start_ts"], clip.stat().st_mtime) if clip.is_file() else event["start_ts"]
        peak = event["peak_frame"] if event["peak_frame"] is not None else event["start_frame"]  # camera events: none
        store.close(event["id"], AnomalyEvent(event["id"], event["start_ts"], event["start_frame"],
                                              event["peak_score"] or 0.0, peak, end, peak),
                    note="interrupted: the service stopped while the event was open")
        done["closed"] += 1
    for path in sorted(root.glob("*/*")) if root.is_dir() else []:
        camera, stem, kind = path.parent.name, path.stem, {".mp4": "clip", ".jpg": "snapshot"}.get(path.suffix)
        try:
            event = store.get(camera, int(stem)) if stem.isdigit() and kind else None
        except UnknownEvent:
            event = None
        if event is None or (kind == "clip" and event["clip"] is None and not playable_frames(path)):
            path.unlink(missing_ok=True)
            done["removed"] += 1
        elif event[kind] is None:
            store.set_evidence(event["id"], add_bytes=path.stat().st_size, **{kind: path.name})
            done["attached"] += 1
    return done
