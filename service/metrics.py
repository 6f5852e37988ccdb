"""Prometheus metrics under the names the alert rules and dashboards rely on. Labels are camera ids,
never URLs. Each service instance owns its registry (several apps can live in one process)."""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from amvad.runtime.types import FrameCondition

STAGES = ("decode", "flow", "model", "score", "heatmap")


class Metrics:
    """``keep_samples``: also keep every observed stage time (``samples``), for exact benchmark percentiles."""

    def __init__(self, keep_samples: bool = False) -> None:
        r = self.registry = CollectorRegistry()
        self.samples: dict[str, list[float]] | None = {} if keep_samples else None
        self.score = Gauge("vad_anomaly_score", "Latest causal anomaly score", ["camera"], registry=r)
        self.frames = Counter("vad_frames_total", "Frames scored or warming up", ["camera"], registry=r)
        self.dropped = Counter("vad_frames_dropped_total", "Frames dropped", ["camera", "reason"], registry=r)
        self.up = Gauge("vad_camera_up", "1 while the camera delivers frames", ["camera"], registry=r)
        self.reconnects = Counter("vad_camera_reconnects_total", "Reconnect attempts", ["camera"], registry=r)
        self.since_last = Gauge("vad_seconds_since_last_frame", "Seconds since the last decoded frame",
                                ["camera"], registry=r)
        self.stage = Histogram("vad_stage_seconds", "Time per frame in each pipeline stage", ["stage"],
                               registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.batch = Histogram("vad_batch_size", "Frames per engine batch (all cameras together)", ["stage"],
                               registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.latency = Histogram("vad_frame_latency_seconds", "Frame handed to the engine -> score out",
                                 registry=r, buckets=(.01, .025, .05, .075, .1, .15, .25, .5, 1, 2.5))
        self.events = Counter("vad_anomaly_events_total", "Anomaly events started", ["camera"], registry=r)
        self.camera_events = Counter("vad_camera_events_total", "Camera events started (never anomalies): type "
                                     "tamper (reason covered, blinded, defocused, noisy, moved) or scene_change "
                                     "(lighting, infrared, daylight)", ["camera", "type", "reason"], registry=r)
        self.tampered = Gauge("vad_camera_tampered", "1 while a tamper event of the camera is open (its frames are "
                              "not scored)", ["camera"], registry=r)
        self.ws_clients = Gauge("vad_ws_clients", "Connected WebSocket clients", ["camera"], registry=r)
        self.threshold = Gauge("vad_anomaly_threshold", "The camera's effective anomaly threshold (its override "
                               "or the model's default); alerts compare vad_anomaly_score with it", ["camera"],
                               registry=r)
        self.notifications = Counter("vad_notifications_total", "Notifications sent, retried, failed or dropped",
                                     ["channel", "result"], registry=r)
        self.evidence_bytes = Gauge("vad_event_storage_bytes", "Bytes of event clips and snapshots kept",
                                    ["camera"], registry=r)
        self.sink_errors = Counter("vad_sink_errors_total", "Failures of one of a camera's result sinks (events, "
                                   "evidence, notify, websocket, stats, ...) or frame taps; the camera goes on",
                                   ["camera", "sink"], registry=r)
        self.night = Gauge("vad_camera_night", "1 while the camera runs its night profile (it shows its infrared "
                           "picture: service/cameras/night.py), else 0", ["camera"], registry=r)
        self.armed = Gauge("vad_camera_armed", "1 while the camera raises events and notifications, 0 while "
                           "disarmed (it still scores)", ["camera"], registry=r)
        # the picture against the footage the model was fitted on (runtime.conditioning; conditioned models
        # only): set from the first measured frame, never created at zero (0 would read as a defocused lens)
        self.sharpness = Gauge("vad_camera_sharpness_ratio", "The picture's sharpness over that of the footage "
                               "the model was fitted on (1: as sharp; Ped2 with Gaussian blur sigma 1.5 px: 0.6, "
                               "sigma 3: 0.23; under the camera watch's defocus_ratio, 0.15: a defocused tamper)",
                               ["camera"], registry=r)
        self.noise = Gauge("vad_camera_noise_ratio", "The picture's sensor noise after level matching over that of "
                           "the footage the model was fitted on (1: as noisy; Ped2 with noise sigma 8: 1.8, at x0.3 "
                           "light: 4.3; over the camera watch's noisy_ratio, 4: a noisy tamper)", ["camera"],
                           registry=r)
        self.store_up = Gauge("vad_event_store_up", "1 while the event database accepts writes", registry=r)
        self.store_pending = Gauge("vad_event_store_pending", "Event writes waiting for the database", registry=r)
        self.logins = Counter("vad_logins_total", "Logins by result: ok, failed (wrong name or password), "
                              "throttled (429: too many failures from that address or for that name)",
                              ["result"], registry=r)
        self.store_up.set(1)
        self._failed_sinks: dict[str, set[str]] = {}
        self._camera_event_labels: dict[str, set[tuple[str, str]]] = {}
        self._per_camera = (self.score, self.frames, self.up, self.reconnects, self.since_last,
                            self.events, self.ws_clients, self.threshold, self.armed, self.tampered,
                            self.night)
        self._picture = (self.sharpness, self.noise)

    @contextlib.contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - t0)

    def observe(self, stage: str, seconds: float) -> None:
        """Record a stage time measured elsewhere (e.g. decode, timed in the ingest thread)."""
        self.stage.labels(stage).observe(seconds)
        if self.samples is not None:
            self.samples.setdefault(stage, []).append(seconds)

    def observe_batch(self, stage: str, seconds: float, size: int) -> None:
        self.batch.labels(stage).observe(size)
        if self.samples is not None:
            self.samples.setdefault(f"{stage}_batch", []).append(seconds)
            self.samples.setdefault(f"{stage}_batch_size", []).append(size)

    def observe_latency(self, seconds: float) -> None:
        self.latency.observe(seconds)
        if self.samples is not None:
            self.samples.setdefault("engine_latency", []).append(seconds)

    def init_camera(self, camera: str, threshold: float) -> None:
        """Create every per-camera series at zero so dashboards see the camera at once, and export the
        camera's effective threshold (what the alert rules compare the score with)."""
        for m in self._per_camera:
            m.labels(camera)
        self.threshold.labels(camera).set(threshold)
        self.dropped.labels(camera, "queue_full")

    def picture(self, camera: str, condition: FrameCondition) -> None:
        """The latest frame's picture against the fitted footage (nothing when it was not measured)."""
        for gauge, value in ((self.sharpness, condition.sharpness), (self.noise, condition.noise)):
            if value is not None:
                gauge.labels(camera).set(value)

    def remove_camera(self, camera: str) -> None:
        for m in (*self._per_camera, *self._picture):
            with contextlib.suppress(KeyError):  # a series never set has nothing to remove
                m.remove(camera)
        for reason in ("queue_full", "ws_slow_client"):
            with contextlib.suppress(KeyError):
                self.dropped.remove(camera, reason)
        for labels in self._camera_event_labels.pop(camera, set()):
            with contextlib.suppress(KeyError):
                self.camera_events.remove(camera, *labels)
        for sink in self._failed_sinks.pop(camera, set()):
            with contextlib.suppress(KeyError):
                self.sink_errors.remove(camera, sink)

    def camera_event(self, camera: str, kind: str, reason: str) -> None:
        """A camera event started (counted per type and reason)."""
        self._camera_event_labels.setdefault(camera, set()).add((kind, reason))
        self.camera_events.labels(camera, kind, reason).inc()

    def sink_error(self, camera: str, sink: str) -> None:
        self._failed_sinks.setdefault(camera, set()).add(sink)
        self.sink_errors.labels(camera, sink).inc()

    def store_health(self, up: bool, pending: int) -> None:
        self.store_up.set(int(up))
        self.store_pending.set(pending)

    def render(self) -> bytes:
        return generate_latest(self.registry)
