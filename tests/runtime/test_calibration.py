"""Thresholds for a target false-alarm rate on normal footage, counted as the service counts events."""

from __future__ import annotations

import numpy as np
import pytest

from amvad.runtime.calibration import check_fit_footage, events_per_hour, pick_threshold


def test_events_are_counted_like_the_service_raises_them():
    fps = 10.0
    scores = np.zeros(36000)  # one hour
    scores[1000:1010] = 5.0   # one second above: an event
    scores[2000:2002] = 5.0   # 0.2 s: shorter than the minimum duration, not an event
    assert events_per_hour([scores], [fps], 1.0) == pytest.approx(1.0)
    assert events_per_hour([scores], [fps], 6.0) == 0


def test_the_lowest_threshold_that_meets_the_rate():
    fps, scores = 10.0, np.zeros(36000)
    scores[100:120], scores[5000:5020], scores[9000:9020] = 3.0, 4.0, 5.0
    assert events_per_hour([scores], [fps], pick_threshold([scores], [fps], 3.0)) <= 3.0
    t1 = pick_threshold([scores], [fps], 1.0)
    assert 4.0 < t1 <= 5.0 and events_per_hour([scores], [fps], t1) <= 1.0
    assert pick_threshold([scores], [fps], 0.5) > 5.0  # none allowed: above every score
    assert pick_threshold([scores], [fps], 3.0, floor=2.5) >= 2.5


def test_too_little_footage_says_how_much():
    check_fit_footage(334, 10.0)
    with pytest.raises(ValueError, match=r"footage too short: 100 frames \(4 s at 25 fps\).*at least 334 frames"):
        check_fit_footage(100, 25.0)
