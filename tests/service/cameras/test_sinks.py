"""A camera's sinks, each behind its own error boundary: one that raises is counted and skipped, the
others still get every result, and one that works again is healthy again."""

from __future__ import annotations

import numpy as np

from amvad.runtime.types import Frame, FrameResult
from amvad.service.cameras.sinks import Boundary, Published, ScoreTaps, message
from amvad.service.metrics import Metrics


def published(i: int, score: float | None = 1.0) -> Published:
    frame = Frame("cam", i, 1, float(i), np.zeros((2, 2, 3), np.uint8))
    r = FrameResult(i, float(i), score, False, "live", None, None, None)
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
