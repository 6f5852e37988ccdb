"""Anomaly events from per-frame scores: hysteresis, minimum duration and cooldown (10 fps, threshold 1)."""

from __future__ import annotations

import numpy as np

from amvad.runtime.events import EventConfig, EventTracker, replay_events


def feed(tracker: EventTracker, scores: list[float | None]) -> list[str | None]:
    return [tracker.update(i / 10, i, s) for i, s in enumerate(scores)]


def test_one_crossing_with_dips_is_one_event():
    # given a score that crosses, dips below the threshold but above threshold - hysteresis, and
    # dips deep for less than the cooldown, then stays low
    t = EventTracker(threshold=1.0, hysteresis=0.5, min_duration_s=0.2, cooldown_s=0.5)
    scores = [0, 0, 1.5, 1.6, 3.0, 0.8, 1.4, 0.0, 0.1, 1.2, 1.1, 0, 0, 0, 0, 0, 0, 0, 0]
    changes = feed(t, scores)
    # then exactly one event started and ended, with its peak and the frame where it went low
    assert changes.count("start") == 1 and changes.count("end") == 1
    (ev,) = t.events
    assert (ev.start_frame, ev.peak_frame, ev.peak_score, ev.end_frame) == (2, 4, 3.0, 11)
    assert changes.index("start") == 4  # confirmed once it lasted min_duration_s
    assert t.open is None


def test_short_spikes_and_warmup_make_no_event():
    t = EventTracker(threshold=1.0, hysteresis=0.5, min_duration_s=0.3, cooldown_s=0.5)
    assert feed(t, [None, None, 5.0, 5.0, 0.0, 9.0, 0.0, None, 2.0]) == [None] * 9
    assert t.events == []


def test_separate_crossings_after_cooldown_are_two_events_and_finish_closes_open_one():
    t = EventTracker(threshold=1.0, hysteresis=0.0, min_duration_s=0.0, cooldown_s=0.2)
    feed(t, [2, 2, 0, 0, 0, 0, 2, 2])
    assert [e.start_frame for e in t.events] == [0, 6] and t.events[0].end_frame == 2
    t.finish(0.8, 8)
    assert t.events[1].end_frame == 8 and t.open is None


def test_a_replay_starts_no_event_on_scores_that_were_not_settled():
    # given a stream's first frames scoring high on a window still filling (the mean of one or two frame
    # scores), then normal, then an object that stays
    scores = np.array([3.0, 3.0, 3.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                       2.0, 2.0, 2.0, 2.0, 2.0])
    times = np.arange(len(scores)) / 10
    config = EventConfig(hysteresis=0.5, min_duration_s=0.2, cooldown_s=0.5)
    settled = np.arange(len(scores)) >= 3
    # then the replay raises what the stream raises: the object, not the unsettled start
    assert [e.start_frame for e in replay_events(scores, times, 1.0, config)] == [0, 26]
    assert [e.start_frame for e in replay_events(scores, times, 1.0, config, settled)] == [26]
