"""Live cameras: per camera an ingest thread (decode, reconnect with backoff and jitter, read timeouts),
a submit thread that hands frames to the shared inference engine, and a publish thread that takes the
results in order (metrics, WebSocket). Ingest and submit are joined by a bounded drop-oldest frame queue,
so capture never blocks; a file replayed as fast as possible (``replay_fps: 0``) blocks instead, since a
file has no live deadline and every frame should be scored.

Camera states: connecting -> warming_up -> live; reconnecting after a failure or stall; failed when the
source cannot work (a missing file). Reasons and URLs are always redacted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import queue
import random
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from runtime.engine import InferenceEngine
from runtime.exported_model import ExportedModel
from runtime.files import write_atomic
from runtime.redact import redact
from runtime.scoring import RunningStats
from runtime.stream import Stream
from runtime.types import Frame, FrameResult
from runtime.video import DecodeError, file_path, is_file_source, iter_frames, open_source, stream_fps

from .config import CameraConfig, ServiceSettings
from .event_store import EventStore
from .evidence import EventEvidence, evidence_folder
from .heatmap import HeatScale
from .metrics import Metrics
from .notify import Notifier
from .publish import Broadcaster
from .recordings import Recorder, Recordings

log = logging.getLogger("amvad.cameras")
CONNECTING, RECONNECTING, STREAMING, FAILED = "connecting", "reconnecting", "streaming", "failed"


class CameraNotLive(RuntimeError):
    """Recording or calibrating a camera that delivers no frames right now (HTTP 409)."""


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


class Camera:
    """One live camera on one model (``model``, default the engine's). ``cfg`` is kept current by
    :meth:`set_model`, :meth:`set_threshold` and ``replay_fps`` changes (``PATCH``)."""

    def __init__(self, cfg: CameraConfig, engine: InferenceEngine, settings: ServiceSettings,
                 metrics: Metrics, model: ExportedModel | None = None, store: EventStore | None = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg, self.engine, self.store, self.notifier = cfg, engine, store, notifier
        self.id, self._url = cfg.id, cfg.url.get_secret_value()
        self.url = redact(self._url)
        self.settings, self.metrics, self.ingest = settings, metrics, settings.ingest
        self._stream_lock = threading.Lock()  # the submit thread and a model switch take turns
        self.stream = self._open_stream(model or engine.model, self._load_stats(model or engine.model))
        self.heat_scale = HeatScale()
        self.broadcaster = Broadcaster(self.id, settings.websocket.queue, metrics)
        self.queue = FrameQueue(self.ingest.frame_queue)
        self._results: queue.Queue[tuple[Frame, Future]] = queue.Queue()
        self.ingest_state, self.reason = CONNECTING, None
        self.frames = self.drops = self.reconnects = 0
        self.last_frame_time: float | None = None
        self.fps = 0.0
        self.latest: tuple[Frame, FrameResult] | None = None
        self.recent: deque[dict] = deque(maxlen=600)
        self._recorders: list[Recorder] = []      # fed by the ingest thread
        self._score_taps: list[list[float]] = []  # fed by the publish thread (calibration)
        self.evidence = (EventEvidence(self.id, evidence_folder(settings.state_dir, self.id), store, settings.events,
                                       self._report_evidence) if store is not None else None)
        self._event_id: int | None = None  # the stored id of the open event
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ingest_loop, name=f"ingest-{self.id}", daemon=True),
                         threading.Thread(target=self._submit_loop, name=f"submit-{self.id}", daemon=True),
                         threading.Thread(target=self._publish_loop, name=f"publish-{self.id}", daemon=True)]
        metrics.init_camera(self.id, self.stream.threshold)
        if notifier is not None:
            notifier.camera(self.id)

    @property
    def replay_fps(self) -> float | None:
        return self.cfg.replay_fps

    @property
    def model_name(self) -> str:
        return self.cfg.model or self.settings.model

    def _open_stream(self, model: ExportedModel, stats: RunningStats | None) -> Stream:
        return Stream(self.engine, model=model, masks=self.cfg.masks, threshold=self.cfg.threshold,
                      forget=self.settings.forget, events=self.settings.events, stats=stats, observer=self.metrics)

    def set_model(self, name: str | None, model: ExportedModel) -> None:
        """Score the next frames with ``model``, starting from its own training statistics (frames already
        in the engine finish on the old one); the threshold is the camera's own or the new model's."""
        if model.sha256 == self.stream.model.sha256:
            self.cfg = self.cfg.model_copy(update={"model": name})
            return
        self._close_open_event()
        with self._stream_lock:
            self.cfg = self.cfg.model_copy(update={"model": name})
            self.stream = self._open_stream(model, None)
            self.heat_scale = HeatScale()  # another model's errors have another scale
        self.metrics.threshold.labels(self.id).set(self.stream.threshold)
        log.info("camera %s: now on model %s", self.id, self.model_name)

    def set_threshold(self, threshold: float | None) -> None:
        """The camera's own threshold, or (None) its model's."""
        self.cfg = self.cfg.model_copy(update={"threshold": threshold})
        value = self.stream.model.meta.threshold if threshold is None else threshold
        self.stream.set_threshold(value)
        self.metrics.threshold.labels(self.id).set(value)

    def set_masks(self, masks: list) -> None:
        self.stream.set_masks(masks)
        self.cfg = self.cfg.model_copy(update={"masks": masks})

    def set_replay_fps(self, fps: float | None) -> None:
        self.cfg = self.cfg.model_copy(update={"replay_fps": fps})

    def require_live(self, what: str) -> None:
        if self.ingest_state != STREAMING or self.fps <= 0:
            raise CameraNotLive(f"cannot {what} camera {self.id!r}: it is {self.state}, not delivering frames")

    def record(self, recordings: Recordings, seconds: float) -> Recorder:
        """Keep the next ``seconds`` of decoded frames as H.264 segments (see service/recordings.py)."""
        self.require_live("record")
        recorder = recordings.start(self.id, seconds, self.fps)
        self._recorders = [r for r in self._recorders if not r.finished] + [recorder]
        return recorder

    def collect_scores(self, seconds: float) -> list[float]:
        """The scores of the frames published during the next ``seconds``."""
        self.require_live("calibrate")
        tap: list[float] = []
        self._score_taps = [*self._score_taps, tap]
        try:
            self._stop.wait(seconds)
        finally:
            self._score_taps = [t for t in self._score_taps if t is not tap]
        return tap

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for t in self._threads:
            t.start()

    def signal_stop(self) -> None:
        """Ask the threads to end without waiting (lets many cameras wind down together)."""
        self._stop.set()

    def stop(self, timeout: float = 2.0, *, keep_stats: bool = True) -> None:
        """Stop the threads; ``keep_stats`` saves the running statistics for the next start, otherwise
        (the camera is deleted) they are removed, so a camera re-added under this id starts fresh."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)
        self._close_open_event()
        if self.evidence is not None:
            self.evidence.stop()
        if keep_stats:
            self._save_stats()
        else:
            self._stats_path().unlink(missing_ok=True)
        self.metrics.remove_camera(self.id)

    @property
    def state(self) -> str:
        return self.stream.state if self.ingest_state == STREAMING else self.ingest_state

    def status(self) -> dict:
        since = None if self.last_frame_time is None else round(time.time() - self.last_frame_time, 3)
        return {"id": self.id, "url": self.url, "model": self.model_name, "state": self.state, "reason": self.reason,
                "fps": round(self.fps, 2), "frames": self.frames, "drops": self.drops,
                "reconnects": self.reconnects, "replay_fps": self.replay_fps, "masks": self.cfg.masks, "last_frame_time": self.last_frame_time,
                "seconds_since_last_frame": since, "threshold": self.stream.threshold,
                "ws_clients": len(self.broadcaster.clients)}

    # -- ingest thread -----------------------------------------------------------------------
    def _ingest_loop(self) -> None:
        attempt, segment, next_id = 0, 0, 0
        while not self._stop.is_set():
            if is_file_source(self._url) and not file_path(self._url).is_file():
                self._set_failed(f"no such file: {file_path(self._url).name}")
                return
            try:
                container = open_source(self._url, open_timeout=self.ingest.open_timeout_s,
                                        read_timeout=self.ingest.read_timeout_s)
            except DecodeError as exc:
                self._retry_later(str(exc), attempt)
                attempt += 1
                continue
            segment += 1
            got = 0
            try:
                with container:
                    native_fps = stream_fps(container)
                    paced_fps, t0, paced = None, 0.0, 0  # pacing restarts when replay_fps changes (PATCH)
                    for frame in iter_frames(container, source_id=self.id, segment=segment, first_id=next_id,
                                             wall_clock=True):
                        if self._stop.is_set():
                            return
                        fps = self.replay_fps if self.replay_fps is not None else native_fps
                        if is_file_source(self._url) and fps > 0:  # replay files at their frame rate
                            if fps != paced_fps:
                                paced_fps, t0, paced = fps, time.monotonic(), 0
                            self._stop.wait(max(0.0, t0 + paced / fps - time.monotonic()))
                            paced += 1
                            frame = dataclasses.replace(frame, timestamp=time.time())  # "captured" now
                        self._on_frame(frame)
                        next_id, got = frame.frame_id + 1, got + 1
                        attempt = 0
                if is_file_source(self._url) and got:  # a file camera loops: start over at once
                    continue
                reason = "end of stream"
            except DecodeError as exc:
                reason = str(exc)
            self._retry_later(reason, attempt)
            attempt += 1

    def _on_frame(self, frame: Frame) -> None:
        for recorder in self._recorders:
            recorder.offer(frame)
        if self.evidence is not None:
            self.evidence.on_frame(frame, self.fps)
        now = time.time()
        if self.last_frame_time is not None:
            dt = max(now - self.last_frame_time, 1e-3)
            self.fps = 1.0 / dt if self.fps == 0 else 0.9 * self.fps + 0.1 / dt
        self.last_frame_time = now
        if self.ingest_state != STREAMING:
            self.ingest_state, self.reason = STREAMING, None
            self.metrics.up.labels(self.id).set(1)
        unpaced_file = is_file_source(self._url) and self.replay_fps == 0
        if self.queue.put(frame, block_until=self._stop if unpaced_file else None):
            self.drops += 1
            self.metrics.dropped.labels(self.id, "queue_full").inc()

    def _retry_later(self, reason: str, attempt: int) -> None:
        if self._stop.is_set():
            return
        self.ingest_state, self.reason = RECONNECTING, redact(reason)
        self.metrics.up.labels(self.id).set(0)
        ing = self.ingest
        delay = min(ing.backoff_max_s, ing.backoff_initial_s * 2 ** attempt)
        delay *= 1 + ing.backoff_jitter * random.uniform(-1, 1)
        log.warning("camera %s: %s; reconnecting in %.1f s", self.id, self.reason, delay)
        self._stop.wait(delay)
        self.reconnects += 1
        self.metrics.reconnects.labels(self.id).inc()

    def _set_failed(self, reason: str) -> None:
        self.ingest_state, self.reason = FAILED, redact(reason)
        self.metrics.up.labels(self.id).set(0)
        log.error("camera %s failed: %s", self.id, self.reason)

    # -- inference: submit and publish threads -------------------------------------------------
    def _submit_loop(self) -> None:
        while not self._stop.is_set():
            frame = self.queue.get(timeout=0.5)
            if frame is None:
                continue
            try:
                with self._stream_lock:
                    self._results.put((frame, self.stream.submit(frame)))
            except Exception as exc:  # e.g. a frame that cannot be preprocessed; the camera goes on
                log.exception("camera %s: cannot submit frame %d: %s", self.id, frame.frame_id, redact(str(exc)))

    def _publish_loop(self) -> None:
        last_save = time.monotonic()
        while not (self._stop.is_set() and self._results.empty()):
            try:
                frame, future = self._results.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                result = future.result()
            except Exception as exc:  # keep the camera alive; its next frame starts a new window
                log.error("camera %s: inference failed on frame %d: %s", self.id, frame.frame_id,
                          redact(str(exc)))
                continue
            self._publish(frame, result)
            if time.monotonic() - last_save > self.ingest.stats_save_s:
                self._save_stats()
                last_save = time.monotonic()

    def _publish(self, frame: Frame, r: FrameResult) -> None:
        self.frames += 1
        self.latest = (frame, r)
        if r.heatmap is not None:
            self.heat_scale.update(r.heatmap, r.anomaly)
        m = self.metrics
        m.frames.labels(self.id).inc()
        if r.score is not None:
            m.score.labels(self.id).set(r.score)
            for tap in self._score_taps:
                tap.append(r.score)
        if r.event == "start":
            m.events.labels(self.id).inc()
            self._event_started()
        if self._event_id is not None and r.score is not None and self.evidence is not None:
            self.evidence.on_frame_scored(r.score, frame.pixels, r.heatmap)
        if r.event == "end":
            self._event_ended()
        if r.score is not None and self.notifier is not None:
            self.notifier.score(self.id, r.score, r.anomaly, self.stream.threshold)
        finite = r.score is not None and math.isfinite(r.score)  # every message must be valid JSON
        msg = {"camera": self.id, "frame_id": r.frame_id, "timestamp": r.timestamp,
               "score": round(r.score, 4) if finite else None, "anomaly": r.anomaly,
               "state": self.state, "threshold": self.stream.threshold, "event": r.event, "model": self.model_name}
        self.recent.append(msg)
        self.broadcaster.publish(msg, lambda: self.heatmap_jpeg())

    # -- events: store, evidence, notifications (publish thread) ------------------------------
    def _event_started(self) -> None:
        ev = self.stream.events.open
        if self.store is None or ev is None:
            return
        self._event_id = self.store.open(camera=self.id, model=self.model_name, threshold=self.stream.threshold,
                                         start=ev.start, start_frame=ev.start_frame, peak_score=ev.peak_score,
                                         peak_frame=ev.peak_frame)
        self.evidence.on_start(self._event_id, ev.start)
        if self.notifier is not None:
            self.notifier.event(self.id, "start", self.store.get(self.id, self._event_id))

    def _event_ended(self) -> None:
        if self.store is None or self._event_id is None:
            return
        ev, event_id = self.stream.events.events[-1], self._event_id
        self._event_id = None
        self.store.close(event_id, end=ev.end, end_frame=ev.end_frame, peak_score=ev.peak_score,
                         peak_frame=ev.peak_frame)
        self.evidence.on_end(event_id, ev.end, self.heat_scale)
        if self.notifier is not None:
            self.notifier.event(self.id, "end", self.store.get(self.id, event_id))

    def _close_open_event(self) -> None:
        """An event still open when the camera stops or changes model ends at the last published frame."""
        if self._event_id is not None and self.latest is not None:
            frame, _ = self.latest
            if self.stream.events.open is not None:
                self.stream.events.finish(frame.timestamp, frame.frame_id)
                self._event_ended()

    def _report_evidence(self) -> None:
        self.metrics.evidence_bytes.labels(self.id).set(self.store.evidence_bytes(self.id))

    def heatmap_jpeg(self) -> bytes | None:
        """The latest frame with its heatmap overlay (None while warming up)."""
        if self.latest is None or self.latest[1].heatmap is None:
            return None
        frame, r = self.latest
        with self.metrics.timed("heatmap"):
            return self.heat_scale.overlay(frame.pixels, r.heatmap)

    # -- running statistics on disk ----------------------------------------------------------
    def _stats_path(self) -> Path:
        return self.settings.state_dir / "cameras" / f"{self.id}.json"

    def _load_stats(self, model: ExportedModel) -> RunningStats | None:
        """Saved running stats of this camera with this very model (same file content), or None (start
        from the model's training statistics) when there are none, they belong to another model, or the
        file is unreadable (logged)."""
        path = self._stats_path()
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
            if saved["model_sha256"] == model.sha256:
                return RunningStats.from_dict(saved["stats"])
            log.info("camera %s: saved stats belong to another model; starting from training stats", self.id)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("camera %s: ignoring unreadable stats file %s: %s", self.id, path, exc)
        return None

    def _save_stats(self) -> None:
        path = self._stats_path()
        stream = self.stream
        meta = stream.model.meta
        try:
            write_atomic(path, json.dumps({"model_sha256": stream.model.sha256, "model": self.model_name,
                                           "method": meta.method, "components": [c.name for c in meta.components],
                                           "stats": stream.scorer.stats.to_dict()}))
        except OSError as exc:
            log.warning("camera %s: cannot save running stats to %s: %s", self.id, path, exc)
