"""One live camera, split along its threads:

- the **source** (``source.py``): the ingest thread, decode, reconnect, pacing, the drop-oldest frame
  queue and its counters, and the frame taps (recordings, evidence pre-roll);
- the **hand-off** to inference (here): the submit thread passes each frame to the camera's ``Stream`` on
  the shared engine and puts its future in a bounded queue; when publishing falls behind and that queue
  is full, submit waits, so the frame queue before it drops its oldest frames (counted as
  ``vad_frames_dropped_total{reason="queue_full"}``): memory stays bounded and the newest frames win;
- the **publish** thread (here): takes the results in order and hands each to the sinks (``sinks.py``:
  metrics, events with evidence and notifications, MQTT scores, WebSocket, calibration, running
  statistics), each in its own error boundary.

No thread reads what another one is changing: a result carries a copy of its event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

from runtime.engine import InferenceEngine
from runtime.errors import Conflict
from runtime.exported_model import ExportedModel
from runtime.redact import redact
from runtime.scoring import RunningStats
from runtime.stream import Stream
from runtime.types import Frame, FrameResult

from ..config import CameraConfig, ServiceSettings
from ..event_store import EventStore
from ..evidence import EventEvidence
from ..heatmap import HeatScale
from ..metrics import Metrics
from ..notify import Notifier
from ..publish import Broadcaster
from ..recordings import Recorder, Recordings
from .events import EventSink
from .sinks import Boundary, BroadcastSink, MetricsSink, Published, ScoreNotifySink, ScoreTaps, message
from .source import STREAMING, CameraSource
from .stats import StatsSink, load_stats

log = logging.getLogger("amvad.cameras")


class CameraNotLive(Conflict):
    """Recording or calibrating a camera that delivers no frames right now (HTTP 409)."""


class Camera:
    """One live camera on one model (``model``, default the engine's). ``cfg`` is kept current by
    :meth:`set_model`, :meth:`set_threshold` and ``replay_fps`` changes (``PATCH``)."""

    def __init__(self, cfg: CameraConfig, engine: InferenceEngine, settings: ServiceSettings,
                 metrics: Metrics, model: ExportedModel | None = None, store: EventStore | None = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg, self.engine, self.settings, self.metrics = cfg, engine, settings, metrics
        self.id = cfg.id
        self._stop = threading.Event()
        self.boundary = Boundary(self.id, metrics)
        self.source = CameraSource(self.id, cfg.url.get_secret_value(), settings.ingest, metrics, self.boundary,
                                   lambda: self.cfg.replay_fps, self._stop)
        self.url = redact(cfg.url.get_secret_value())
        self._stream_lock = threading.Lock()  # the submit thread and a model switch take turns
        self._stats_path = settings.paths.camera_stats(self.id)
        model = model or engine.model
        self.stream = self._open_stream(model, load_stats(self._stats_path, model, self.id))
        self.heat_scale = HeatScale()
        self.broadcaster = Broadcaster(self.id, settings.websocket.queue, metrics)
        self._results: queue.Queue[tuple[Frame, Future]] = queue.Queue(settings.ingest.publish_queue)
        self.frames = 0
        self.latest: tuple[Frame, FrameResult] | None = None
        self._recorders: list[Recorder] = []
        self.evidence = (EventEvidence(self.id, settings.paths.evidence(self.id), store, settings.events,
                                       self._report_evidence, lambda exc: self.boundary.failed("evidence", exc))
                         if store is not None else None)
        self.store = store
        self.taps = ScoreTaps()
        self.broadcast = BroadcastSink(self.broadcaster, self.heatmap_jpeg)
        self.stats = StatsSink(self._stats_path, lambda: self.stream, lambda: self.model_name,
                               settings.ingest.stats_save_s)
        self.events = (EventSink(self.id, store, self.evidence, notifier, self.boundary, lambda: self.heat_scale)
                       if store is not None else None)
        self.sinks = [MetricsSink(metrics, lambda: self.heat_scale), *([self.events] if self.events else []),
                      *([ScoreNotifySink(notifier)] if notifier is not None else []), self.broadcast, self.taps,
                      self.stats]
        self.source.taps = [("recordings", self._offer_to_recorders),
                            *([("pre_roll", self.evidence.on_frame)] if self.evidence is not None else [])]
        self._threads = [self.source.thread,
                         threading.Thread(target=self._submit_loop, name=f"submit-{self.id}", daemon=True),
                         threading.Thread(target=self._publish_loop, name=f"publish-{self.id}", daemon=True)]
        metrics.init_camera(self.id, self.stream.threshold)
        if notifier is not None:
            notifier.camera(self.id)

    # -- settings -------------------------------------------------------------------------------
    @property
    def replay_fps(self) -> float | None:
        return self.cfg.replay_fps

    @property
    def model_name(self) -> str:
        return self.cfg.model or self.settings.model

    @property
    def recent(self):
        return self.broadcast.recent

    def _open_stream(self, model: ExportedModel, stats: RunningStats | None) -> Stream:
        return Stream(self.engine, model=model, masks=self.cfg.masks, threshold=self.cfg.threshold,
                      forget=self.settings.forget, events=self.settings.events, stats=stats, observer=self.metrics)

    def set_model(self, name: str | None, model: ExportedModel) -> None:
        """Score the next frames with ``model``, starting from its own training statistics (frames already
        in the engine finish on the old one); the threshold is the camera's own or the new model's."""
        if model.sha256 == self.stream.model.sha256:
            self.cfg = self.cfg.model_copy(update={"model": name})
            return
        if self.events is not None:
            self.events.close_open(note="the camera changed model")
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

    # -- what the API asks of a live camera ----------------------------------------------------------
    def require_live(self, what: str) -> None:
        if self.source.state != STREAMING or self.source.fps <= 0:
            raise CameraNotLive(f"cannot {what} camera {self.id!r}: it is {self.state}, not delivering frames")

    def record(self, recordings: Recordings, seconds: float) -> Recorder:
        """Keep the next ``seconds`` of decoded frames as H.264 segments (see service/recordings.py)."""
        self.require_live("record")
        recorder = recordings.start(self.id, seconds, self.source.fps)
        self._recorders = [r for r in self._recorders if not r.finished] + [recorder]
        return recorder

    def _offer_to_recorders(self, frame: Frame, fps: float) -> None:
        for recorder in self._recorders:
            recorder.offer(frame)

    def collect_scores(self, seconds: float) -> list[float]:
        """The scores of the frames published during the next ``seconds``."""
        self.require_live("calibrate")
        tap = self.taps.open()
        try:
            self._stop.wait(seconds)
        finally:
            self.taps.close(tap)
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
        if self.events is not None:
            self.boundary.call("events", self.events.close_open, "the camera stopped")
        if self.evidence is not None:
            self.boundary.call("evidence", self.evidence.stop)
        if keep_stats:
            self.boundary.call("stats", self.stats.save)
        else:
            self._stats_path.unlink(missing_ok=True)
        self.metrics.remove_camera(self.id)

    @property
    def state(self) -> str:
        return self.stream.state if self.source.state == STREAMING else self.source.state

    @property
    def fps(self) -> float:
        return self.source.fps

    @property
    def drops(self) -> int:
        return self.source.drops

    @property
    def last_frame_time(self) -> float | None:
        return self.source.last_frame_time

    def status(self) -> dict:
        src = self.source
        since = None if src.last_frame_time is None else round(time.time() - src.last_frame_time, 3)
        return {"id": self.id, "url": self.url, "model": self.model_name, "state": self.state, "reason": src.reason,
                "fps": round(src.fps, 2), "frames": self.frames, "drops": src.drops, "reconnects": src.reconnects,
                "replay_fps": self.replay_fps, "masks": self.cfg.masks, "last_frame_time": src.last_frame_time,
                "seconds_since_last_frame": since, "threshold": self.stream.threshold,
                "ws_clients": len(self.broadcaster.clients), "faults": self.faults(),
                "publish_backlog": self._results.qsize()}

    def faults(self) -> dict[str, str]:
        """What fails right now and why: the camera's sinks, and the event database they write to."""
        faults = self.boundary.faults()
        if self.store is not None and not self.store.up:
            faults["event_store"] = f"{self.store.pending} event write(s) waiting: {self.store.last_error}"
        return faults

    # -- inference: submit and publish threads -------------------------------------------------
    def _submit_loop(self) -> None:
        while not self._stop.is_set():
            frame = self.source.queue.get(timeout=0.5)
            if frame is None:
                continue
            try:
                with self._stream_lock:
                    future = self.stream.submit(frame)
            except Exception as exc:  # e.g. a frame that cannot be preprocessed; the camera goes on
                log.exception("camera %s: cannot submit frame %d: %s", self.id, frame.frame_id, redact(str(exc)))
                continue
            while not self._stop.is_set():  # bounded: publishing behind holds submit, the frame queue drops
                try:
                    self._results.put((frame, future), timeout=0.5)
                    break
                except queue.Full:
                    continue

    def _publish_loop(self) -> None:
        while not (self._stop.is_set() and self._results.empty()):
            try:
                frame, future = self._results.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                result = future.result()
            except Exception as exc:  # e.g. its model over the engine's budget: the next frame starts a new window
                self.boundary.failed("inference", exc)
                continue
            self.boundary.ok("inference")
            self.boundary.call("publish", self._publish, frame, result)

    def _publish(self, frame: Frame, r: FrameResult) -> None:
        self.frames += 1
        self.latest = (frame, r)
        threshold = self.stream.threshold
        p = Published(self.id, self.model_name, threshold, frame, r,
                      message(self.id, self.model_name, threshold, self.state, r))
        for sink in self.sinks:
            self.boundary.call(sink.name, sink.publish, p)

    def _report_evidence(self) -> None:
        self.metrics.evidence_bytes.labels(self.id).set(self.store.evidence_bytes(self.id))

    def heatmap_jpeg(self) -> bytes | None:
        """The latest frame with its heatmap overlay (None while warming up)."""
        if self.latest is None or self.latest[1].heatmap is None:
            return None
        frame, r = self.latest
        with self.metrics.timed("heatmap"):
            return self.heat_scale.overlay(frame.pixels, r.heatmap)
