"""The night profile inside one camera: published frames whose picture turns grey switch the camera to its
night model and threshold (over a schedule's profile, while the schedule still arms), colour brings the
day back with the statistics it had learnt; the mode survives a restart; dropping the profile at night
brings the day profile back at once."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.types import Frame, FrameCondition, FrameResult
from amvad.service.cameras import Camera
from amvad.service.cameras import camera as camera_module
from amvad.service.config import CameraConfig, ServiceSettings
from amvad.service.metrics import Metrics

COLOUR, GREY = 0.06, 0.002
PIXELS = np.zeros((8, 8, 3), np.uint8)


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = InferenceEngine(tiny_model, EngineConfig(device="cpu", flow_threads=1, model_threads=1))
    yield engine
    engine.close()


class Frames:
    """Publishes results at 10 frames/s of footage time, each with the chroma given."""

    def __init__(self, cam: Camera) -> None:
        self.cam, self.i = cam, 0

    def show(self, colour: float, seconds: float) -> None:
        for _ in range(round(seconds * 10)):
            t = 1764600000.0 + self.i / 10
            r = FrameResult(self.i, t, None, False, "warming_up", None, None, None,
                            condition=FrameCondition(brightness=0.4, contrast=0.1, colour=colour))
            self.cam._publish(Frame("cam", self.i, 0, t, PIXELS), r)
            self.i += 1


def night_gauge(metrics: Metrics, camera: str) -> float:
    return metrics.night.labels(camera)._value.get()


def test_the_infrared_picture_runs_the_night_profile_over_a_schedule_and_colour_brings_the_day_back(
        engine, tiny_model_b, tmp_path, monkeypatch):
    monkeypatch.setattr(camera_module, "utcnow", lambda: datetime(2026, 6, 10, 12, 30, tzinfo=timezone.utc))
    night_model = engine.load(tiny_model_b)
    models = {None: engine.model, "gate-night": night_model}
    cfg = CameraConfig(id="yard", url="file:///nowhere.mp4", timezone="UTC", threshold=2.5,
                       schedules=[{"name": "lunch", "start": "12:00", "end": "13:00", "threshold": 9.5,
                                   "armed": False}],
                       night={"model": "gate-night", "hold_s": 1.0})
    metrics = Metrics()
    settings = ServiceSettings(model="unused", state_dir=tmp_path)
    cam = Camera(cfg, engine, settings, metrics, resolve_model=models.__getitem__)
    feed = Frames(cam)
    # by day (colour), the schedule's profile is in force
    feed.show(COLOUR, 2)
    assert cam.stream.threshold == 9.5 and cam.status()["profile"]["by"] == "schedule lunch"
    assert cam.status()["night"]["mode"] == "day" and cam.status()["night"]["colour_seen"]
    cam.stream.scorer.stats.count = 77  # what the day model has learnt
    day_stream = cam.stream
    # the picture turns grey: night once it has been grey for hold_s, over the schedule's profile
    feed.show(GREY, 0.9)
    assert cam.stream is day_stream and not cam.night_profile
    feed.show(GREY, 0.2)
    status = cam.status()
    assert cam.stream.model is night_model and cam.model_name == "gate-night" and cam.stream is not day_stream
    assert cam.stream.threshold == night_model.meta.threshold
    assert status["profile"]["by"] == "ir" and status["profile"]["since"] == "2025-12-01T14:40:03+00:00"
    assert "infrared" in status["profile"]["why"] and status["night"]["mode"] == "night"
    assert (status["armed"], status["armed_by"]) == (False, "schedule lunch")  # the schedule still disarms
    assert night_gauge(metrics, "yard") == 1
    # colour again: the schedule's profile, the day model with what it had learnt
    feed.show(COLOUR, 1.2)
    status = cam.status()
    assert cam.stream.model is engine.model and cam.stream.scorer.stats.count == 77
    assert cam.stream.threshold == 9.5 and status["profile"]["by"] == "schedule lunch"
    assert night_gauge(metrics, "yard") == 0
    feed.show(GREY, 1.2)
    assert cam.night_profile
    cam.stop()

    # a restart at night (the picture still grey): the night profile from the first frame
    again = Camera(cfg, engine, settings, Metrics(), resolve_model=models.__getitem__)
    assert again.stream.model is night_model and again.status()["profile"]["by"] == "ir"
    # dropping the profile at night brings the camera's own (here: the schedule's) back at once
    again.set_night(None)
    assert again.stream.model is engine.model and again.stream.threshold == 9.5
    assert again.status()["night"] is None and again.status()["profile"]["by"] == "schedule lunch"
    again.stop(keep_stats=False)
    assert not (tmp_path / "cameras" / "yard.night").exists()


def test_a_threshold_only_night_profile_keeps_the_model_and_a_grey_camera_stays_on_the_day(engine, tmp_path):
    cfg = CameraConfig(id="lobby", url="file:///nowhere.mp4", threshold=2.5, night={"threshold": 7.0, "hold_s": 1})
    cam = Camera(cfg, engine, ServiceSettings(model="unused", state_dir=tmp_path), Metrics())
    feed = Frames(cam)
    feed.show(GREY, 30)  # a grey-only camera: never night
    assert not cam.night_profile and cam.stream.threshold == 2.5 and not cam.status()["night"]["colour_seen"]
    feed.show(COLOUR, 2)
    stream = cam.stream
    feed.show(GREY, 2)
    assert cam.night_profile and cam.stream is stream and cam.stream.threshold == 7.0
    assert cam.status()["profile"]["model"] == cam.model_name
    cam.stop()
