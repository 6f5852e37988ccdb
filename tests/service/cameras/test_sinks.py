"""A camera's sinks, each behind its own error boundary: one that raises is counted and skipped, the
others still get every result, and one that works again is healthy again."""

from __future__ import annotations

import numpy as np

from amvad.runtime.types import Frame, FrameCondition, FrameResult
from amvad.service.cameras.sinks import Boundary, MetricsSink, Published, ScoreTaps, message
from amvad.service.metrics import Metrics


def published(i: int, score: float | None = 1.0, condition: FrameCondition | None = None) -> Published:
    frame = Frame("cam", i, 1, float(i), np.zeros((2, 2, 3), np.uint8))
    r = FrameResult(i, float(i), score, False, "live", None, None, None, condition=condition)
    return Published("cam", "m", 2.0, frame, r, message("cam", "m", 2.0, "live", r))


class Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.broken, self.seen = True, []

    def publish(self, p: Published) -> None:
        if self.broken:
            raise OSError(28, "No space left on device")
        self.seen.append(p.frame.frame_id)


def test_a_failing_sink_is_counted_and_skipped_and_recovers_by_itself():
    metrics = Metrics()
    boundary, flaky, taps = Boundary("cam", metrics), Flaky(), ScoreTaps()
    tap = taps.open()
    for i in range(3):
        for sink in (flaky, taps):
            boundary.call(sink.name, sink.publish, published(i))
    assert tap == [1.0, 1.0, 1.0]  # the healthy sink got every result
    assert boundary.faults() == {"flaky": "OSError: [Errno 28] No space left on device"}
    assert 'vad_sink_errors_total{camera="cam",sink="flaky"} 3.0' in metrics.render().decode()
    flaky.broken = False  # the disk has room again
    boundary.call(flaky.name, flaky.publish, published(3))
    assert flaky.seen == [3] and boundary.faults() == {}
    metrics.remove_camera("cam")
    assert 'sink="flaky"' not in metrics.render().decode()


def test_messages_are_valid_json_for_non_finite_scores():
    r = FrameResult(7, 1.5, float("nan"), False, "live", None, None, None)
    assert message("cam", "m", 2.0, "live", r)["score"] is None


def picture(metrics: Metrics) -> dict[str, float]:
    return {line.split("{")[0]: float(line.split()[-1]) for line in metrics.render().decode().splitlines()
            if line.startswith(("vad_camera_sharpness_ratio{", "vad_camera_noise_ratio{"))}


def test_the_picture_gauges_follow_measured_frames_only_and_go_with_the_camera():
    metrics = Metrics()
    metrics.init_camera("cam", 2.0)
    assert picture(metrics) == {}  # never created at 0, which would read as a defocused lens
    sink = MetricsSink(metrics, heat_scale=lambda: None)
    sink.publish(published(0, condition=FrameCondition(brightness=0.4, contrast=0.2)))  # a model without conditioning
    assert picture(metrics) == {}
    sink.publish(published(1, condition=FrameCondition(brightness=0.4, contrast=0.2, sharpness=0.23, noise=1.9)))
    assert picture(metrics) == {"vad_camera_sharpness_ratio": 0.23, "vad_camera_noise_ratio": 1.9}
    sink.publish(published(2, score=None))  # a frame without measurements keeps the last values
    sink.publish(published(3, condition=FrameCondition(brightness=0.4, contrast=0.2, sharpness=0.95, noise=1.0)))
    assert picture(metrics) == {"vad_camera_sharpness_ratio": 0.95, "vad_camera_noise_ratio": 1.0}
    metrics.remove_camera("cam")
    assert picture(metrics) == {}
