"""Clip windows say which frame each score belongs to: the last frame of its window."""

from __future__ import annotations

import numpy as np
import pytest

from amvad.runtime.windows import scored_frames, window


def test_scores_belong_to_the_last_frame_of_each_window():
    assert list(scored_frames(7, 4)) == [3, 4, 5, 6]
    assert list(scored_frames(7, 4, stride=2)) == [3, 5]
    frames = np.arange(7)[:, None]
    flows = np.arange(6)[:, None]  # flows[i]: frame i -> i + 1
    f, o = window(frames, flows, 5, 4)
    assert f[:, 0].tolist() == [2, 3, 4, 5] and o[:, 0].tolist() == [2, 3, 4]


def test_short_clips_and_frames_without_history_are_refused():
    with pytest.raises(ValueError, match="clip cam has 3 frames, fewer than the clip length 4"):
        scored_frames(3, 4, name="clip cam")
    with pytest.raises(ValueError, match="no full window"):
        window(np.zeros((7, 1)), np.zeros((6, 1)), 2, 4)
