"""The one score-curve plot: PNG bytes (and a file on request), warm-up frames left out, ground truth and
events shaded, inputs that do not line up refused."""

from __future__ import annotations

import numpy as np
import pytest

from amvad.runtime.plots import score_plot

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_clip_with_ground_truth_is_drawn_into_bytes_and_a_file(tmp_path):
    ids = np.arange(4, 40)
    scores = np.sin(ids / 5.0)
    out = tmp_path / "plots" / "01.png"
    png = score_plot(ids, scores, 0.5, title="clip 01", labels=ids > 30, path=out)
    assert png.startswith(PNG) and out.read_bytes() == png


def test_an_upload_with_warm_up_frames_and_an_open_event(tmp_path):
    scores = [None] * 4 + [0.1, 0.2, 0.9, 1.1, 1.2]
    png = score_plot(range(len(scores)), scores, 0.8, title="a $weird$ name.mp4", events=[(6, None)])
    assert png.startswith(PNG)
    assert score_plot([], [], None, title="empty").startswith(PNG)


def test_inputs_that_do_not_line_up_are_refused():
    with pytest.raises(ValueError, match="3 frame ids for 2 scores"):
        score_plot([0, 1, 2], [0.1, 0.2], 0.5, title="x")
    with pytest.raises(ValueError, match="and 1 labels"):
        score_plot([0, 1], [0.1, 0.2], 0.5, title="x", labels=[True])
