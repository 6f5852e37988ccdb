"""A model-free reference for ``amvad robustness --reference``: how much of the anomalies' motion a change
leaves in the picture, whatever model scores it.

Per frame, the speed of the default TV-L1 flow between the frame and the one ``GAP`` frames before it, both
as the model takes them (resized; levels matched and shake undone by the model's conditioning, so a camera's
own motion is not read as the scene's), per pixel divided by ``GAP``; per ``PATCH`` x ``PATCH`` patch (half a
patch apart) that speed averaged over the last ``WINDOW`` frames; the frame's score is its fastest patch.
Causal like the service's score and learned from nothing, so its AUC on a change's labelled clips is what the
picture alone gives a speed detector: a model near it under a change is held back by the picture, not by
what it learned. Frames ``GAP`` apart and an 8-frame mean read Ped2 under H.264 CRF 42 best of the settings
swept (frames 1-4 apart, means over 1-16 frames, 64x96 to 240x360: docs/robustness-log.md, "What CRF 42
leaves").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from amvad.models.flow import FlowEstimator, build_flow
from amvad.models.flow.span import trailing_mean
from amvad.models.metadata import Conditioning, ModelMetadata
from amvad.runtime.preprocess import to_model_frame
from amvad.runtime.types import Frame

from .data import condition_clip

GAP = 3        # frames between the two of each flow
WINDOW = 8     # frames a patch's speed is averaged over
PATCH = 16     # px at the model's input size
BATCH = 32     # frame pairs per flow call


def model_inputs(frames: Sequence[Frame], height: int, width: int, channels: int = 1,
                 conditioning: Conditioning | None = None) -> torch.Tensor:
    """(N, channels, height, width) float in [0, 1]: the frames as a model of that input and conditioning
    takes them (:func:`runtime.preprocess.to_model_frame`, then :func:`training.data.condition_clip`)."""
    x = np.stack([to_model_frame(f.pixels, height=height, width=width, channels=channels) for f in frames])
    return torch.from_numpy(x if conditioning is None else condition_clip(x, conditioning))


def patch_speeds(x: torch.Tensor, flow: FlowEstimator, gap: int = GAP, patch: int = PATCH) -> np.ndarray:
    """(N, P, Q): each patch's mean speed (px per frame) from frame i - ``gap`` to frame i; the first ``gap``
    frames, which have no frame that far back, take frame ``gap``'s."""
    if len(x) <= gap:
        raise ValueError(f"{len(x)} frames: a speed over {gap} frames needs more")
    pairs = len(x) - gap  # frame i - gap to frame i, for i from gap on
    with torch.no_grad():
        flows = torch.cat([flow(x[i:min(i + BATCH, pairs)], x[i + gap:min(i + BATCH, pairs) + gap])
                           for i in range(0, pairs, BATCH)])
    speed = flows.norm(dim=1, keepdim=True) / gap
    maps = F.avg_pool2d(speed, patch, patch // 2)[:, 0].numpy()
    return np.concatenate([np.repeat(maps[:1], gap, axis=0), maps])


def reference_scores(frames: Sequence[Frame], meta: ModelMetadata, flow: FlowEstimator | None = None,
                     gap: int = GAP, window: int = WINDOW) -> np.ndarray:
    """(N,): each frame's score, the fastest patch of its causal mean speed (see the module doc), on the frames
    as the model of ``meta`` takes them."""
    x = model_inputs(frames, meta.height, meta.width, meta.channels, meta.conditioning)
    maps = patch_speeds(x, flow or build_flow("default"), gap)
    return trailing_mean(torch.from_numpy(maps), window).flatten(1).amax(1).numpy()
