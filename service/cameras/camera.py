"""One live camera, split along its threads:

- the **source** (``source.py``): the ingest thread, decode, reconnect, pacing, the drop-oldest frame
  queue and its counters, and the frame taps (recordings, evidence pre-roll);
- the **hand-off** to inference (here): the submit thread passes each frame to the camera's ``Stream`` on
  the shared engine and puts its future in a bounded queue; when publishing falls behind and that queue
  is full, submit waits, so the frame queue before it drops its oldest frames (counted as
  ``vad_frames_dropped_total{reason="queue_full"}``): memory stays bounded and the newest frames win;
- the **publish** thread (here): takes the results in order and hands each to the sinks (``sinks.py``:
  metrics, events with evidence and notifications, MQTT scores, WebSocket, calibration, running
  statistics), each in its own error boundary; at least every ``RECHECK_S`` it also applies what the
  schedules put in force (``schedule.py``: armed or not, the profile's model and threshold). It also
  reads each frame's chroma for the night profile (``night.py``): the infrared picture runs the night
  profile, which wins over a schedule's profile (a schedule's model and threshold were chosen for the
  colour picture; a threshold means nothing on another model's scores); schedules still arm and disarm.

A disarmed camera runs all of this; only the events the operator sees are held back (``events.ArmGate``).

No thread reads what another one is changing: a result carries a copy of its event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timezone

from amvad.runtime.engine import InferenceEngine
from amvad.runtime.errors import Conflict
from amvad.runtime.exported_model import ExportedModel
from amvad.runtime.redact import redact
from amvad.runtime.scoring import RunningStats
from amvad.runtime.stream import Stream
from amvad.runtime.types import Frame, FrameResult

from ..config import CameraConfig, NightConfig, ScheduleConfig, ServiceSettings
from ..event_store import EventStore
from ..evidence import EventEvidence
from ..heatmap import HeatScale
from ..metrics import Metrics
from ..notify import Notifier
from ..publish import Broadcaster
from ..recordings import Recorder, Recordings
from .camera_events import CameraEventSink, shown
from .events import ArmGate, EventSink
from .night import IrDetector, load_state, save_state, state_path
from .schedule import InForce, in_force, zone
from .sinks import Boundary, BroadcastSink, MetricsSink, Published, ScoreNotifySink, ScoreTaps, message
from .source import STREAMING, CameraSource
from .stats import StatsSink, load_stats

log = logging.getLogger("amvad.cameras")
RECHECK_S = 0.5  # how often the publish thread re-evaluates the schedules (changes apply within a second)


def utcnow() -> datetime:
    """The clock the schedules are evaluated against (one name, so a test can move it)."""
    return datetime.now(timezone.utc)


class CameraNotLive(Conflict):
    """Recording or calibrating a camera that delivers no frames right now (HTTP 409)."""


class Camera:
    """One live camera on one model (``model``: its configured one, default the engine's; a schedule's
    profile may run another, which ``resolve_model`` loads by name). ``cfg`` is kept current by
    :meth:`set_model`, :meth:`set_threshold`, :meth:`set_armed`, :meth:`set_schedules` and ``replay_fps``
    changes (``PATCH``)."""

    def __init__(self, cfg: CameraConfig, engine: InferenceEngine, settings: ServiceSettings,
                 metrics: Metrics, model: ExportedModel | None = None, store: EventStore | None = None,
                 notifier: Notifier | None = None,
                 resolve_model: Callable[[str | None], ExportedModel] | None = None) -> None:
        self.cfg, self.engine, self.settings, self.metrics = cfg, engine, settings, metrics
        self.id = cfg.id
        self.notifier = notifier
        base = model or engine.model
        self._resolve = resolve_model or (lambda name: base)  # without a manager: only the one model
        self._tz = zone(cfg.timezone)
        self._night_path = state_path(settings.paths.stats_dir, self.id)
        self.night: IrDetector | None = (None if cfg.night is None
                                         else IrDetector(cfg.night, load_state(self._night_path, self.id)))
        self._arm_lock = threading.RLock()  # PATCH, MQTT and the publish thread's re-check take turns
        self.in_force: InForce = self._evaluate()
        self._checked = time.monotonic()
        self.gate = ArmGate()
        self._stash: dict[str, RunningStats] = {}  # running stats of the models a profile switched away from
        self._stop = threading.Event()
        self.boundary = Boundary(self.id, metrics)
        self.source = CameraSource(self.id, cfg.url.get_secret_value(), settings.ingest, metrics, self.boundary,
                                   lambda: self.cfg.replay_fps, self._stop)
        self.url = redact(cfg.url.get_secret_value())
        self._stream_lock = threading.Lock()  # the submit thread and a model switch take turns
        self._stats_path = settings.paths.camera_stats(self.id)
        self.active_model, threshold = self._profile_of(self.in_force)
        model = base if self.active_model == cfg.model else self._resolve(self.active_model)  # a profile at start
        self.stream = self._open_stream(model, load_stats(self._stats_path, model, self.id), threshold)
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
        self._tamper_when_disarmed = settings.events.camera_watch.tamper_when_disarmed
        self.camera_events = (CameraEventSink(self.id, store, self.evidence, notifier, metrics, self.boundary,
                                              self._tamper_when_disarmed)
                              if store is not None else None)
        self.sinks = [MetricsSink(metrics, lambda: self.heat_scale), *([self.events] if self.events else []),
                      *([self.camera_events] if self.camera_events else []),
                      *([ScoreNotifySink(notifier)] if notifier is not None else []), self.broadcast, self.taps,
                      self.stats]
        self.source.taps = [("recordings", self._offer_to_recorders),
                            *([("pre_roll", self.evidence.on_frame)] if self.evidence is not None else [])]
        self._threads = [self.source.thread,
                         threading.Thread(target=self._submit_loop, name=f"submit-{self.id}", daemon=True),
                         threading.Thread(target=self._publish_loop, name=f"publish-{self.id}", daemon=True)]
        metrics.init_camera(self.id, self.stream.threshold)
        metrics.armed.labels(self.id).set(int(self.in_force.armed))
        metrics.night.labels(self.id).set(int(self.night_profile))
        if notifier is not None:
            notifier.camera(self.id)
            notifier.armed(self.id, self.in_force.armed)

    # -- settings -------------------------------------------------------------------------------
    @property
    def replay_fps(self) -> float | None:
        return self.cfg.replay_fps

    @property
    def model_name(self) -> str:
        """The model scoring now (a schedule's profile may run another than the configured one)."""
        return self.active_model or self.settings.model

    @property
    def recent(self):
        return self.broadcast.recent

    def _open_stream(self, model: ExportedModel, stats: RunningStats | None, threshold: float | None) -> Stream:
        return Stream(self.engine, model=model, masks=self.cfg.masks, threshold=threshold,
                      forget=self.settings.forget, events=self.settings.events, stats=stats, observer=self.metrics)

    def set_model(self, name: str | None, model: ExportedModel) -> None:
        """The camera's own model. Unless a schedule's profile runs another one now, the next frames are
        scored by ``model``, starting from its own training statistics (frames already in the engine
        finish on the old one); the threshold is the camera's own or the new model's."""
        with self._arm_lock:
            self.cfg = self.cfg.model_copy(update={"model": name})
            want, threshold = self._profile_of(self.in_force)
            if want == name:
                self._switch(name, model, threshold, resume=False)

    def follow(self, name: str, model: ExportedModel) -> bool:
        """``model`` is the new current version of ``name``: if ``name`` runs now (the camera's own model or
        a profile's), the next frames are scored by it as after a PATCH of the model; whether it switched."""
        with self._arm_lock:
            if self.active_model != name or model.sha256 == self.stream.model.sha256:
                return False
            self._switch(name, model, self._profile_of(self.in_force)[1], resume=False)
            return True

    def set_threshold(self, threshold: float | None) -> None:
        """The camera's own threshold, or (None) its model's; a profile's threshold wins while in force."""
        with self._arm_lock:
            self.cfg = self.cfg.model_copy(update={"threshold": threshold})
            self._apply_threshold(self._profile_of(self.in_force)[1])

    def set_armed(self, armed: bool) -> InForce:
        """Arm or disarm now (a manual change): holds until a schedule window that sets ``armed`` begins."""
        with self._arm_lock:
            self.cfg = self.cfg.model_copy(update={"armed": armed, "armed_since": utcnow()})
            return self.reconcile()

    def set_schedules(self, schedules: list[ScheduleConfig], tz: str | None) -> InForce:
        """New schedules and time zone (validated, their models loadable), in force at once: they decide
        again, so an earlier manual change no longer beats a window in force (``armed`` stays the state
        outside windows)."""
        with self._arm_lock:
            self.cfg = self.cfg.model_copy(update={"schedules": schedules, "timezone": tz, "armed_since": None})
            self._tz = zone(tz)
            return self.reconcile()

    def set_night(self, night: NightConfig | None) -> None:
        """A new night profile (validated, its model loadable), or None to drop it; in force at once. What
        the detector learnt (the mode, colour seen) is kept: a profile changed at night runs at once."""
        with self._arm_lock:
            self.cfg = self.cfg.model_copy(update={"night": night})
            state = None if self.night is None else self.night.state
            self.night = None if night is None else IrDetector(night, state or load_state(self._night_path, self.id))
            self.metrics.night.labels(self.id).set(int(self.night_profile))
            self.reconcile()

    def _event_sinks(self) -> list[EventSink | CameraEventSink]:
        """The sinks that keep an open event in the store (anomalies, camera events)."""
        return [s for s in (self.events, self.camera_events) if s is not None]

    @property
    def night_profile(self) -> bool:
        """Whether the night profile is in force (the camera shows its infrared picture)."""
        return self.night is not None and self.night.night

    def _watch_night(self, r: FrameResult) -> None:
        """On the publish thread, every frame: a switch of the infrared mode applies the profile at once
        (through :meth:`reconcile`, as a schedule's does) and is saved for the next start."""
        night = self.night
        if night is None or r.condition is None:
            return
        seen = night.state.colour_seen
        if night.update(r.timestamp, r.condition.colour):
            log.info("camera %s: %s", self.id, night.why() if night.night else "colour is back: the day profile")
            self.metrics.night.labels(self.id).set(int(night.night))
            self.reconcile()
        elif night.state.colour_seen == seen:
            return
        save_state(self._night_path, night.state)

    # -- schedules: what is in force ---------------------------------------------------------------
    def _evaluate(self) -> InForce:
        c = self.cfg
        return in_force(armed=c.armed, armed_since=c.armed_since, rules=c.schedules, tz=self._tz,
                        now=utcnow())

    def _profile_of(self, f: InForce) -> tuple[str | None, float | None]:
        """(model name, threshold) in force: the night profile's while the picture is infrared, else the
        schedule's profile, else the camera's own. A profile that names another model and no threshold
        takes that model's own threshold (None)."""
        if self.night_profile:
            model, threshold = self.cfg.night.model, self.cfg.night.threshold
        elif f.profile is not None:
            model, threshold = f.model, f.threshold
        else:
            return self.cfg.model, self.cfg.threshold
        name = self.cfg.model if model is None else model
        if threshold is not None:
            return name, threshold
        return name, self.cfg.threshold if name == self.cfg.model else None

    def reconcile(self) -> InForce:
        """Evaluate the schedules now and apply the result: arming (read by each published result) and
        the profile's model and threshold. Called at once by PATCH/MQTT, and by the publish thread."""
        with self._arm_lock:
            before, f = self.in_force, self._evaluate()
            self.in_force = f
            if f.armed != before.armed:
                log.info("camera %s: %s", self.id, f.why_armed(self.cfg.armed_since))
                self.metrics.armed.labels(self.id).set(int(f.armed))
                if self.notifier is not None:
                    self.notifier.armed(self.id, f.armed)
            # a profile that cannot be applied (its model fails to load) is a fault of the camera, shown
            # under ``faults.schedule`` and tried again; arming is in force either way
            self.boundary.call("schedule", self._apply_profile, f)
        return f

    def _apply_profile(self, f: InForce) -> None:
        name, threshold = self._profile_of(f)
        if name != self.active_model:
            self._switch(name, self._resolve(name), threshold, resume=True)
        self._apply_threshold(threshold)

    def _switch(self, name: str | None, model: ExportedModel, threshold: float | None, *, resume: bool) -> None:
        """Run ``model`` from the next frame on. ``resume`` (a profile switch) goes on from the running
        statistics this camera learnt with that model earlier in this run (or saved on disk), so a nightly
        switch does not restart learning every day; otherwise it starts from the training statistics."""
        if model.sha256 == self.stream.model.sha256:
            self.active_model = name
            self._apply_threshold(threshold)
            return
        for sink in self._event_sinks():  # the new model's stream tracks and watches afresh
            sink.close_open(note="the camera changed model")
        self._stash[self.stream.model.sha256] = self.stream.scorer.stats
        stats = None
        if resume:
            kept = self._stash.get(model.sha256)
            stats = (RunningStats.from_dict(kept.to_dict()) if kept is not None
                     else load_stats(self._stats_path, model, self.id))
        with self._stream_lock:
            self.active_model = name
            self.stream = self._open_stream(model, stats, threshold)
            self.heat_scale = HeatScale()  # another model's errors have another scale
        self.metrics.threshold.labels(self.id).set(self.stream.threshold)
        log.info("camera %s: now on model %s", self.id, self.model_name)

    def _apply_threshold(self, threshold: float | None) -> None:
        value = self.stream.model.meta.threshold if threshold is None else threshold
        if value != self.stream.threshold:
            self.stream.set_threshold(value)
            self.metrics.threshold.labels(self.id).set(value)

    def _recheck(self) -> None:
        """On the publish thread: the schedules at most every ``RECHECK_S``, and the end of an event that
        was open when the camera was disarmed (also when no frame comes)."""
        if time.monotonic() - self._checked >= RECHECK_S:
            self._checked = time.monotonic()
            self.boundary.call("arming", self.reconcile)
        if not self.in_force.armed and self.events is not None:
            self.boundary.call("events", self.events.close_open, "the camera was disarmed")
        ce = self.camera_events
        if not self.in_force.armed and ce is not None and not shown(False, ce.record, self._tamper_when_disarmed):
            self.boundary.call("camera_events", ce.close_open, "the camera was disarmed")

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

    @property
    def stopped(self) -> bool:
        """Asked to stop (deleted, or the service stops): a calibration listening to it gives up."""
        return self._stop.is_set()

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
        for sink in self._event_sinks():
            self.boundary.call(sink.name, sink.close_open, "the camera stopped")
        if self.evidence is not None:
            self.boundary.call("evidence", self.evidence.stop)
        if keep_stats:
            self.boundary.call("stats", self.stats.save)
        else:
            self._stats_path.unlink(missing_ok=True)
            self._night_path.unlink(missing_ok=True)
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
        return {"id": self.id, "url": self.url, "model": self.model_name, "model_sha256": self.stream.model.sha256,
                "state": self.state, "reason": src.reason,
                "fps": round(src.fps, 2), "frames": self.frames, "drops": src.drops, "reconnects": src.reconnects,
                "replay_fps": self.replay_fps, "masks": self.cfg.masks, "last_frame_time": src.last_frame_time,
                "seconds_since_last_frame": since, "threshold": self.stream.threshold,
                "ws_clients": len(self.broadcaster.clients), "faults": self.faults(),
                "publish_backlog": self._results.qsize(),
                "camera_event": None if self.camera_events is None else self.camera_events.status(),
                "camera_watch": self.stream.watch.status(), **self.arming()}

    def arming(self) -> dict:
        """What is in force and why: arming (by whom), the profile, the windows in force."""
        f, c, night = self.in_force, self.cfg, self.night
        if self.night_profile:
            by, since, why = "ir", night.status()["since"], night.why()
        elif f.profile is not None:
            by, since, why = f.profile_by, f.profile.start.isoformat(), f.profile.describe()
        else:
            by, since, why = "camera", None, "the camera's own model and threshold"
        profile = {"by": by, "since": since, "model": self.model_name, "threshold": self.stream.threshold,
                   "why": why}
        return {"armed": f.armed, "armed_by": f.armed_by,
                "armed_since": None if c.armed_since is None else c.armed_since.isoformat(),
                "armed_why": f.why_armed(c.armed_since), "profile": profile,
                "windows": [{"name": w.name, "start": w.start.isoformat(), "end": w.end.isoformat()}
                            for w in f.windows],
                "timezone": str(self._tz), "schedules": [s.model_dump() for s in c.schedules],
                "night": None if night is None else night.status()}

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
            self._recheck()
            try:
                frame, future = self._results.get(timeout=RECHECK_S)
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
        self.boundary.call("night", self._watch_night, r)
        threshold, armed = self.stream.threshold, self.in_force.armed
        event = self.gate.event(armed, r)
        ce = r.camera_event_record
        seen = ce if ce is not None and ce.end is None and shown(armed, ce, self._tamper_when_disarmed) else None
        p = Published(self.id, self.model_name, threshold, frame, r,
                      message(self.id, self.model_name, threshold, self.state, r, event, armed, seen), armed, event)
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
