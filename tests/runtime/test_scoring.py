"""Causal scoring: training statistics, running normalisation from normal frames only, smoothing."""

from __future__ import annotations

import numpy as np
import pytest

from amvad.models.metadata import ComponentStats
from amvad.runtime.scoring import StreamScorer, gop_starts, min_max_per_clip, training_scores

COMPONENTS = [ComponentStats(name="a", weight=0.5, mean=1.0, std=0.5),
              ComponentStats(name="b", weight=0.5, mean=-30.0, std=2.0)]


def test_score_is_weighted_zscore_of_training_stats():
    s = StreamScorer(COMPONENTS, threshold=3.0, smoothing=1, forget=0.0)
    assert s.update(np.array([1.0, -30.0])) == 0.0
    assert abs(s.update(np.array([2.0, -26.0])) - (0.5 * 2 + 0.5 * 2)) < 1e-12


def test_scores_are_causal():
    rng = np.random.default_rng(0)
    comps = rng.normal([1.0, -30.0], [0.5, 2.0], size=(50, 2))
    a = StreamScorer(COMPONENTS, threshold=3.0, smoothing=4).score_clip(comps)
    changed = comps.copy()
    changed[30:] += 100.0  # the future changes ...
    b = StreamScorer(COMPONENTS, threshold=3.0, smoothing=4).score_clip(changed)
    np.testing.assert_array_equal(a[:30], b[:30])  # ... the past scores do not


def test_anomalies_do_not_teach_the_baseline():
    s = StreamScorer(COMPONENTS, threshold=2.0, smoothing=1, forget=0.1)
    for _ in range(50):
        s.update(np.array([5.0, -20.0]))  # far above threshold: never learned
    assert np.allclose(s.stats.mean, [1.0, -30.0]) and s.stats.count == 0
    for _ in range(50):
        s.update(np.array([1.4, -29.0]))  # normal but shifted: learned
    assert s.stats.count == 50 and abs(s.stats.mean[0] - 1.4) < 0.01


def test_frames_over_the_learn_threshold_are_scored_but_not_learned_from():
    # a threshold taken under benign changes (3) above the clean footage's own (1): a frame scoring 2 is
    # no anomaly, but the statistics do not learn it, so they stay those the clean footage had
    s = StreamScorer(COMPONENTS, threshold=3.0, smoothing=1, forget=0.1, learn_threshold=1.0)
    assert s.update(np.array([2.0, -26.0])) == 2.0 and s.stats.count == 0
    assert s.update(np.array([1.2, -29.0])) < 1.0 and s.stats.count == 1
    s.threshold = 0.1  # an operator's lower threshold still gates
    s.update(np.array([1.2, -29.0]))
    assert s.stats.count == 1


def test_a_carried_frame_keeps_the_window_and_teaches_nothing():
    s = StreamScorer(COMPONENTS, threshold=3.0, smoothing=3, forget=0.1)
    first = s.update(np.array([2.0, -30.0]), carried=True)  # nothing to carry yet: scored
    assert first == 1.0 and s.stats.count == 1
    mean = s.stats.mean.copy()
    for _ in range(2):  # as often as asked: the window does not move and nothing is learned
        assert s.update(np.array([50.0, 0.0]), carried=True) == first
    assert s.stats.count == 1 and np.array_equal(s.stats.mean, mean)
    assert s.update(np.array([1.0, -30.0])) == pytest.approx((1.0 + 0.0) / 2, abs=0.1)


def test_a_window_that_drops_its_highest_frame_ignores_a_one_frame_spike_but_not_an_object():
    normal = np.tile([1.0, -30.0], (12, 1))
    spike = normal.copy()
    spike[6] = [5.0, -14.0]  # one frame's codec jump: z = 8 in both components
    plain = StreamScorer(COMPONENTS, threshold=3.0, smoothing=5, forget=0.0).score_clip(spike)
    dropped = StreamScorer(COMPONENTS, threshold=3.0, smoothing=5, forget=0.0, drop=1).score_clip(spike)
    assert plain.max() == pytest.approx(8 / 5) and dropped.max() == 0.0
    lasting = normal.copy()
    lasting[4:] = [5.0, -14.0]  # an object that stays: the window fills with it
    scores = StreamScorer(COMPONENTS, threshold=3.0, smoothing=5, forget=0.0, drop=1).score_clip(lasting)
    assert scores[4] == 0.0 and scores[5] == pytest.approx(8 / 4) and scores[-1] == pytest.approx(8.0)
    np.testing.assert_array_equal(  # training statistics are taken the same way
        training_scores(COMPONENTS, lasting, 5, drop=1), scores)


def test_a_filling_window_keeps_more_than_half_of_its_frames():
    s = StreamScorer(COMPONENTS, threshold=np.inf, smoothing=5, forget=0.0, drop=2)
    z = [s.update(np.array([1.0 + 0.5 * k, -30.0 + 2.0 * k])) for k in (4, 2, 0, 6, 8)]  # frame scores 4, 2, 0, 6, 8
    assert z == pytest.approx([4.0, 3.0, 1.0, 2.0, 2.0])  # 1 kept of 1, 2 of 2, 2 of 3, 3 of 4, 3 of 5
    with pytest.raises(ValueError, match="smoothing_drop"):
        StreamScorer(COMPONENTS, threshold=3.0, smoothing=5, drop=3)


def test_a_score_is_settled_once_its_window_is_full_and_again_after_a_gap():
    s = StreamScorer(COMPONENTS, threshold=np.inf, smoothing=3, forget=0.0)
    settled = []
    for _ in range(4):
        s.update(np.array([1.0, -30.0]))
        settled.append(s.settled)
    assert settled == [False, False, True, True]
    s.update(np.array([1.0, -30.0]), carried=True)  # a carried frame adds nothing to the window
    s.reset_window()  # a gap in the stream
    assert not s.settled
    s.update(np.array([1.0, -30.0]), carried=True)
    s.update(np.array([1.0, -30.0]))
    assert not s.settled  # the carried frame started an empty window: 2 of 3


def test_a_group_of_pictures_starts_at_a_keyframe_after_predicted_frames():
    keyframes = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)
    assert gop_starts(keyframes).tolist() == [False, False, False, True, False, False, True, False]
    assert not gop_starts(np.ones(5, bool)).any()  # image folders, MJPEG
    comps = np.random.default_rng(0).normal([1.0, -30.0], [0.5, 2.0], size=(8, 2))
    comps[3] += 100.0  # the codec's jump, at the new group's first frame
    scores = training_scores(COMPONENTS, comps, 3, gop_starts(keyframes))
    assert scores[3] == scores[2] and scores.max() < 3.0


def test_paper_protocol_min_max_per_clip():
    comps = np.array([[0.0, 10.0], [1.0, 20.0], [0.5, 15.0]])
    np.testing.assert_allclose(min_max_per_clip(comps, np.array([0.5, 0.5])), [0.0, 1.0, 0.5])


def test_rebaseline_after_a_scene_change_scales_positive_errors_and_moves_the_rest():
    # given a light that makes the positive error "a" 1.8x larger, and moves "b" (not positive) by +5
    rng = np.random.default_rng(1)
    normal = rng.normal([1.0, -30.0], [0.5, 2.0], size=(400, 2))
    normal[:, 0] = np.abs(normal[:, 0])
    lit = normal * [1.8, 1.0] + [0.0, 5.0]
    before = StreamScorer(COMPONENTS, threshold=3.0, smoothing=1, forget=0.0).score_clip(lit[:200])
    assert before.mean() > 1.0  # without a re-baseline the new light alone looks anomalous
    s = StreamScorer(COMPONENTS, threshold=3.0, smoothing=1, forget=0.0)
    s.rebaseline(lit[:30])
    # then the new light scores like the old one did (mean near 0, same spread), and an anomaly still stands out
    after = s.score_clip(lit[200:])
    reference = StreamScorer(COMPONENTS, threshold=3.0, smoothing=1, forget=0.0).score_clip(normal[200:])
    assert abs(after.mean()) < 0.3 and after.std() == pytest.approx(reference.std(), rel=0.35)
    assert s.update(np.array([4.0 * 1.8, -20.0])) > 3.0
