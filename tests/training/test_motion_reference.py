"""The model-free motion reference of ``amvad robustness --reference``: a causal mean that is a mean of the
rows it says, a faster object scoring higher than a slower one, a still picture scoring near nothing, and a
shaken camera's own motion not read as the scene's when the model undoes shake."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from amvad.models.flow import build_flow
from amvad.models.flow.span import trailing_mean
from amvad.models.metadata import MotionSpeed
from amvad.runtime.conditioning import fit_conditioning
from amvad.runtime.motion_speed import clip_speed
from amvad.runtime.types import Frame
from amvad.training.motion_reference import model_inputs, reference_scores
from amvad.training.perturbations import get_change, perturb_clip

H, W = 96, 160
PLAIN = SimpleNamespace(height=H, width=W, channels=1, conditioning=None)  # what reference_scores reads of a model


def frames_with_square(speed: float, n: int = 12, h: int = H, w: int = W) -> list[Frame]:
    """A bright textured square crossing a smooth textured background at ``speed`` px per frame (RGB)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    background = 90 + 20 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 1, (h, w))
    texture = 190 + 50 * np.sin(xx[:16, :16] ** 1.5 / 6.0 + yy[:16, :16] / 3.0)  # no period a shift aliases to
    out = []
    for i in range(n):
        img = background.copy()
        x = int(round(10 + speed * i))
        img[16:32, x:x + 16] = texture
        out.append(Frame("c", i, 0, i / 10, np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)))
    return out


def test_the_causal_mean_averages_each_row_with_the_ones_before_it():
    a = np.arange(12, dtype=np.float64).reshape(6, 2) ** 2
    got = trailing_mean(torch.from_numpy(a), 3).numpy()  # the flows' span mean, which the score reuses
    want = np.stack([a[max(0, i - 2):i + 1].mean(axis=0) for i in range(len(a))])
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(trailing_mean(torch.from_numpy(a), 1).numpy(), a)


def test_a_faster_object_scores_higher_and_a_still_picture_near_nothing():
    flow = build_flow("default")
    still, slow, fast = (reference_scores(frames_with_square(s), PLAIN, flow, MotionSpeed(window=4))
                         for s in (0.0, 0.5, 2.0))
    assert still.shape == slow.shape == fast.shape == (12,)
    # speeds read as px per frame (the patch a little wider than the square's path reads a little less)
    assert still.max() < 0.1
    assert 0.25 < slow.min() and slow.max() < 0.8
    assert 1.5 < fast.min() and fast.max() < 2.2


def test_the_speed_of_a_frame_comes_only_from_frames_before_it():
    # the square starts moving at frame 8: no frame before it reads motion
    frames = frames_with_square(0.0)[:8] + frames_with_square(2.0)[8:]
    peaks = clip_speed(model_inputs(frames, H, W), build_flow("default"), MotionSpeed(window=1))
    assert peaks.shape == (12,)
    assert peaks[:8].max() < 0.1 and peaks[8:].min() > 1.0


def test_too_short_a_clip_is_refused():
    with pytest.raises(ValueError, match="3 frames"):
        clip_speed(model_inputs(frames_with_square(1.0, n=3), H, W), build_flow("default"), MotionSpeed())


def test_a_shaken_camera_is_not_read_as_motion_when_the_model_undoes_shake():
    # a still scene shaken ±3 px per frame: raw, the whole picture moves; through the conditioning of a model
    # fitted on the still scene the shake is undone first
    still = frames_with_square(0.0, n=16)
    shaken = list(perturb_clip(get_change("shake"), 3.0, still, seed=1))
    fitted = fit_conditioning(model_inputs(still, H, W).numpy())
    raw = reference_scores(shaken, PLAIN)
    steadied = reference_scores(shaken, SimpleNamespace(**{**vars(PLAIN), "conditioning": fitted}))
    assert raw.min() > 0.5  # px per frame, averaged over 8 frames
    assert steadied.max() < 0.1
