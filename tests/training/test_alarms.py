"""Operator-facing figures of `amvad eval`: false alarms per hour, caught events and detection delays,
on hand-made score curves whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from amvad.runtime.events import EventConfig
from amvad.training.alarms import LabelledScores, alarm_report, operating_point, recall_threshold, runs

FPS = 10.0
NO_HYSTERESIS = EventConfig(hysteresis=0.0, min_duration_s=0.0, cooldown_s=0.0)


def clip(scores: list[float], labels: list[int], first_id: int = 4) -> LabelledScores:
    ids = np.arange(first_id, first_id + len(scores))
    return LabelledScores(ids, np.array(scores, dtype=float), np.array(labels), ids / FPS)


def test_runs_of_true_values():
    assert runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 2), (4, 4)]
    assert runs(np.array([1, 1], bool)) == [(0, 1)]
    assert runs(np.zeros(3, bool)) == []


def test_events_caught_with_delays_in_frames_and_seconds():
    # two anomalous events: the first flagged 2 frames after it starts, the second never
    a = clip([0, 0, 0, 0.2, 0.3, 0.9, 0.9, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0, 0])
    b = clip([0, 0.1, 0.2, 0.1, 0], [0, 1, 1, 1, 0])
    p = operating_point([a, b], 0.5, NO_HYSTERESIS)
    assert (p["events_caught"], p["events_total"]) == (1, 2)
    assert p["detection_delay_frames"] == {"median": 2.0, "p90": 2.0}
    assert p["detection_delay_s"] == {"median": 0.2, "p90": 0.2}
    assert [e["caught"] for e in p["events"]] == [True, False]
    assert p["events"][0]["start_frame"] == 7 and p["events"][1]["delay_s"] is None
    assert p["frame_recall"] == pytest.approx(2 / 7, abs=1e-4) and p["false_alarms"] == 0


def test_false_alarms_per_hour_of_normal_footage():
    # 37 normal frames at 10 fps = 3.7 s; two alarms on normal frames (3 frames, 1 frame), one on the anomaly
    scores = [0] * 10 + [1, 1, 1] + [0] * 10 + [1] + [0] * 5 + [1, 1, 1] + [0] * 8
    labels = [0] * 29 + [1, 1, 1] + [0] * 8
    p = operating_point([clip(scores, labels)], 0.5, NO_HYSTERESIS)
    assert p["false_alarms"] == 2 and p["normal_hours"] == pytest.approx(3.7 / 3600, abs=1e-5)
    assert p["false_alarms_per_hour"] == pytest.approx(2 / (3.7 / 3600), abs=0.01)
    # the service's rules apply: a 1-frame blip is shorter than the minimum duration, so one alarm less
    rules = EventConfig(hysteresis=0.0, min_duration_s=0.15, cooldown_s=0.0)
    assert operating_point([clip(scores, labels)], 0.5, rules)["false_alarms"] == 1


def test_operating_point_catches_ninety_percent_of_anomalous_frames():
    rng = np.random.default_rng(0)
    labels = (np.arange(400) % 40 >= 30).astype(int)
    c = clip(list(rng.normal(size=400) + 2 * labels), list(labels))
    t = recall_threshold([c])
    pos = c.scores[labels == 1]
    assert (pos >= t).mean() >= 0.9 and (pos > t).mean() < 0.9  # the highest such threshold
    report = alarm_report([c], None, NO_HYSTERESIS)
    assert report["at_threshold"] is None
    assert report["at_recall_90"]["threshold"] == pytest.approx(t, abs=1e-6)
    assert recall_threshold([clip([0, 0], [0, 0])]) is None
