"""Arming and schedules inside one camera, with a clock the test moves: the publish thread applies a
window within a second (with no frame coming), a profile switches model and threshold and switching
back resumes the running statistics; the gate shows no event while disarmed and resumes an ongoing one."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pytest

from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.types import AnomalyEvent, FrameResult
from amvad.service.cameras import Camera
from amvad.service.cameras import camera as camera_module
from amvad.service.cameras.events import ArmGate
from amvad.service.config import CameraConfig, ServiceSettings
from amvad.service.metrics import Metrics


class Clock:
    def __init__(self, text: str) -> None:
        self.now = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


class Notes:
    """A notifier stand-in that records the arm states a camera reports."""

    def __init__(self) -> None:
        self.states: list[tuple[str, bool]] = []

    def camera(self, camera: str) -> None:
        return None

    def armed(self, camera: str, armed: bool) -> None:
        self.states.append((camera, armed))

    def score(self, *args) -> None:
        return None


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = InferenceEngine(tiny_model, EngineConfig(device="cpu", flow_threads=1, model_threads=1))
    yield engine
    engine.close()


def armed_gauge(metrics: Metrics, camera: str) -> float:
    return metrics.armed.labels(camera)._value.get()


def test_the_publish_thread_applies_a_window_within_a_second(engine, tmp_path, monkeypatch):
    # given a camera with no frames (its file does not exist) and a window that disarms it from 10:00 UTC
    clock = Clock("2026-06-10 09:59:59")
    monkeypatch.setattr(camera_module, "utcnow", clock)
    cfg = CameraConfig(id="gate", url="file:///nowhere.mp4", timezone="UTC",
                       schedules=[{"name": "maintenance", "start": "10:00", "end": "11:00", "armed": False}])
    metrics, notes = Metrics(), Notes()
    cam = Camera(cfg, engine, ServiceSettings(model="unused", state_dir=tmp_path), metrics, notifier=notes)
    assert cam.in_force.armed and cam.in_force.armed_by == "default" and armed_gauge(metrics, "gate") == 1
    cam.start()
    try:
        # when the clock reaches the window
        clock.now = clock.now.replace(hour=10, minute=0, second=0)
        t0 = time.monotonic()
        while cam.in_force.armed and time.monotonic() - t0 < 3:
            time.sleep(0.05)
        # then within a second it is disarmed, says by what, and reports it
        assert time.monotonic() - t0 <= 1.0 and not cam.in_force.armed
        status = cam.status()
        assert (status["armed"], status["armed_by"], status["timezone"]) == (False, "schedule maintenance", "UTC")
        assert "2026-06-10T10:00:00+00:00" in status["armed_why"] and status["windows"][0]["name"] == "maintenance"
        assert armed_gauge(metrics, "gate") == 0 and notes.states == [("gate", True), ("gate", False)]
        # and a manual change after the window began wins over it
        cam.set_armed(True)
        assert cam.status()["armed_by"] == "manual" and notes.states[-1] == ("gate", True)
    finally:
        cam.stop()


def test_a_profile_switches_model_and_threshold_and_back_resumes_the_stats(engine, tiny_model_b, tmp_path,
                                                                           monkeypatch):
    clock = Clock("2026-06-10 12:00")
    monkeypatch.setattr(camera_module, "utcnow", clock)
    night = engine.load(tiny_model_b)
    models = {None: engine.model, "night": night}
    cfg = CameraConfig(id="yard", url="file:///nowhere.mp4", timezone="Europe/Berlin", threshold=2.5,
                       schedules=[{"name": "night", "start": "22:00", "end": "06:00", "model": "night"},
                                  {"name": "strict", "start": "13:00", "end": "14:00", "threshold": 9.5}])
    cam = Camera(cfg, engine, ServiceSettings(model="unused", state_dir=tmp_path), Metrics(),
                 resolve_model=models.__getitem__)
    assert cam.stream.model is engine.model and cam.stream.threshold == 2.5
    cam.stream.scorer.stats.count = 77  # what the day model has learnt
    # 23:00 in Berlin: the night profile runs its model with that model's own threshold
    clock.now = datetime(2026, 6, 10, 21, 0, tzinfo=timezone.utc)
    cam.reconcile()
    assert cam.stream.model is night and cam.model_name == "night"
    assert cam.stream.threshold == night.meta.threshold and cam.status()["profile"]["by"] == "schedule night"
    # the next morning the camera's own model is back and goes on from what it had learnt
    clock.now = datetime(2026, 6, 11, 10, 0, tzinfo=timezone.utc)
    cam.reconcile()
    assert cam.stream.model is engine.model and cam.stream.scorer.stats.count == 77
    assert cam.stream.threshold == 2.5 and cam.status()["profile"]["by"] == "camera"
    # a profile with only a threshold keeps the model
    clock.now = datetime(2026, 6, 11, 11, 30, tzinfo=timezone.utc)  # 13:30 in Berlin
    cam.reconcile()
    assert cam.stream.model is engine.model and cam.stream.threshold == 9.5
    cam.stop()


def result(i: int, score: float | None, event: str | None = None, open_event: bool = True) -> FrameResult:
    record = AnomalyEvent(1, 0.0, 0, 5.0, 0) if open_event else None
    return FrameResult(i, float(i), score, score is not None, "live", np.zeros(2), None, event, record)


def test_the_gate_shows_no_event_while_disarmed_and_resumes_an_ongoing_one():
    gate = ArmGate()
    assert gate.event(True, result(0, 5.0, "start")) == "start"
    assert gate.event(False, result(1, 5.0)) is None            # disarmed: nothing shown
    assert gate.event(False, result(2, 5.0, "end", False)) is None
    assert gate.event(False, result(3, 5.0, "start")) is None   # an event the tracker starts while disarmed
    assert gate.event(True, result(4, None)) is None            # armed again, warming up
    assert gate.event(True, result(5, 5.0)) == "start"          # still anomalous: an event from this frame
    assert gate.event(True, result(6, 5.0)) is None
    assert gate.event(True, result(7, 1.0, "end")) == "end"
    # an end of an event that was never shown starting is not shown either
    gate = ArmGate()
    assert gate.event(False, result(0, 5.0, "start")) is None
    assert gate.event(True, result(1, 1.0, "end", False)) is None
