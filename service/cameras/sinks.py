"""Where a camera's published results go, each behind its own error boundary (as roboflow's
``multi_sink``): a sink that raises is logged (the first failure with its traceback, then at most once a
minute), counted in ``vad_sink_errors_total{camera, sink}`` and skipped for that result; the other sinks
and the camera go on. A sink that works again is healthy again at its next call, so a fault that goes
needs no restart. What must not be lost across a fault (events) keeps its own retry (the event store's
outbox); what is only worth having now (a score for the chart) is skipped.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from amvad.runtime.redact import redact
from amvad.runtime.types import CameraEvent, Frame, FrameResult

from ..heatmap import HeatScale
from ..metrics import Metrics
from ..notify import Notifier
from ..publish import Broadcaster

log = logging.getLogger("amvad.cameras")
LOG_EVERY_S = 60.0  # a sink that keeps failing is logged this often


@dataclass(frozen=True)
class Published:
    """One result as the camera publishes it: the frame, its result and the WebSocket message; ``armed``
    and ``event``: whether the camera was armed, and the event change the operator sees (None while
    disarmed; see ``events.ArmGate``), which the sinks read instead of ``result.event``."""
    camera: str
    model: str
    threshold: float
    frame: Frame
    result: FrameResult
    message: dict
    armed: bool = True
    event: str | None = None


class Sink(Protocol):
    name: str

    def publish(self, p: Published) -> None: ...


@dataclass
class SinkHealth:
    errors: int = 0
    failing: bool = False
    last_error: str | None = None
    last_logged: float = -1e9


class Boundary:
    """Calls a camera's sinks (and its frame taps) each in its own try, and keeps their health."""

    def __init__(self, camera: str, metrics: Metrics) -> None:
        self.camera, self.metrics = camera, metrics
        self.health: dict[str, SinkHealth] = {}
        self._lock = threading.Lock()

    def call(self, name: str, fn: Callable[..., Any], *args: Any) -> bool:
        """``fn(*args)``; False (and the failure recorded) when it raised."""
        try:
            fn(*args)
        except Exception as exc:
            self.failed(name, exc)
            return False
        self.ok(name)
        return True

    def ok(self, name: str) -> None:
        """``name`` worked: it is healthy again (logged once when it was failing)."""
        h = self.health.get(name)
        if h is not None and h.failing:
            h.failing = False
            log.warning("camera %s: %s works again after %d error(s)", self.camera, name, h.errors)

    def failed(self, name: str, exc: BaseException) -> None:
        with self._lock:
            h = self.health.setdefault(name, SinkHealth())
            h.errors += 1
            first, h.failing = not h.failing, True
            h.last_error = redact(f"{type(exc).__name__}: {exc}")[:300]
            now = time.monotonic()
            loud = first or now - h.last_logged >= LOG_EVERY_S
            if loud:
                h.last_logged = now
        self.metrics.sink_error(self.camera, name)
        if loud:
            log.error("camera %s: %s failed (%d error(s) so far; the camera goes on): %s", self.camera, name,
                      h.errors, h.last_error, exc_info=exc if first else None)

    def faults(self) -> dict[str, str]:
        """The sinks failing right now and why."""
        return {name: h.last_error for name, h in self.health.items() if h.failing}


class MetricsSink:
    """Prometheus per-frame series and the overlay colour scale."""
    name = "metrics"

    def __init__(self, metrics: Metrics, heat_scale: Callable[[], HeatScale]) -> None:
        self.metrics, self._heat_scale = metrics, heat_scale

    def publish(self, p: Published) -> None:
        r, m = p.result, self.metrics
        m.frames.labels(p.camera).inc()
        if r.score is not None:
            m.score.labels(p.camera).set(r.score)
        if r.condition is not None:
            m.picture(p.camera, r.condition)
        if p.event == "start":
            m.events.labels(p.camera).inc()
        if r.heatmap is not None:
            self._heat_scale().update(r.heatmap, r.anomaly)


class BroadcastSink:
    """The recent messages (``/scores``) and the WebSocket fan-out."""
    name = "websocket"

    def __init__(self, broadcaster: Broadcaster, heatmap_jpeg: Callable[[], bytes | None], keep: int = 600) -> None:
        self.broadcaster, self._heatmap_jpeg = broadcaster, heatmap_jpeg
        self.recent: deque[dict] = deque(maxlen=keep)

    def publish(self, p: Published) -> None:
        self.recent.append(p.message)
        self.broadcaster.publish(p.message, self._heatmap_jpeg)


class ScoreNotifySink:
    """Throttled scores to MQTT (the notifier drops them while the broker is away: no stale backlog)."""
    name = "mqtt_scores"

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def publish(self, p: Published) -> None:
        r = p.result
        if r.score is not None and math.isfinite(r.score):
            self.notifier.score(p.camera, r.score, r.anomaly, p.threshold)


class ScoreTaps:
    """Scores of the frames published while a calibration listens."""
    name = "calibration"

    def __init__(self) -> None:
        self._taps: list[list[float]] = []

    def open(self) -> list[float]:
        tap: list[float] = []
        self._taps = [*self._taps, tap]
        return tap

    def close(self, tap: list[float]) -> None:
        self._taps = [t for t in self._taps if t is not tap]

    def publish(self, p: Published) -> None:
        if p.result.score is not None:
            for tap in self._taps:
                tap.append(p.result.score)


def message(p_camera: str, model: str, threshold: float, state: str, r: FrameResult, event: str | None = None,
            armed: bool = True, camera_event: CameraEvent | None = None) -> dict:
    """The per-frame JSON message of the WebSocket and ``/scores`` (always valid JSON: no NaN).
    ``camera_event``: the open tamper or scene change the operator sees ({type, reason}); ``held``: the
    frame was not scored because of one (its score is null)."""
    finite = r.score is not None and math.isfinite(r.score)
    return {"camera": p_camera, "frame_id": r.frame_id, "timestamp": r.timestamp,
            "score": round(r.score, 4) if finite else None, "anomaly": r.anomaly, "state": state,
            "threshold": threshold, "event": event, "model": model, "armed": armed, "held": r.held,
            "camera_event": None if camera_event is None else {"type": camera_event.type,
                                                               "reason": camera_event.reason}}
