"""A model-free reference for ``amvad robustness --reference``: how much of the anomalies' motion a change
leaves in the picture, whatever model scores it.

Per frame, the runtime's motion-speed component (:mod:`runtime.motion_speed`, at its default settings:
the fastest 16x16 patch's speed between frames 3 apart, averaged over the last 8 frames) on the frames as
the model takes them (resized; levels matched and shake undone by the model's conditioning, so a camera's own
motion is not read as the scene's). Causal like the service's score and learned from nothing, so its AUC on a
change's labelled clips is what the picture alone gives a speed detector: a model near it under a change is
held back by the picture, not by what it learned. Frames 3 apart and an 8-frame mean read Ped2 under H.264
CRF 42 best of the settings swept (frames 1-4 apart, means over 1-16 frames, 64x96 to 240x360:
docs/robustness-log.md, "What CRF 42 leaves").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from amvad.models.flow import FlowEstimator, build_flow
from amvad.models.metadata import Conditioning, ModelMetadata, MotionSpeed
from amvad.runtime.motion_speed import clip_speed
from amvad.runtime.preprocess import to_model_frame
from amvad.runtime.types import Frame

from .data import condition_clip


def model_inputs(frames: Sequence[Frame], height: int, width: int, channels: int = 1,
                 conditioning: Conditioning | None = None) -> torch.Tensor:
    """(N, channels, height, width) float in [0, 1]: the frames as a model of that input and conditioning
    takes them (:func:`runtime.preprocess.to_model_frame`, then :func:`training.data.condition_clip`)."""
    x = np.stack([to_model_frame(f.pixels, height=height, width=width, channels=channels) for f in frames])
    return torch.from_numpy(x if conditioning is None else condition_clip(x, conditioning))


def reference_scores(frames: Sequence[Frame], meta: ModelMetadata, flow: FlowEstimator | None = None,
                     spec: MotionSpeed | None = None) -> np.ndarray:
    """(N,): each frame's speed score (``spec``: the defaults) on the frames as the model of ``meta`` takes
    them, with the default flow (the one the bundled models are trained with) unless ``flow`` is given."""
    x = model_inputs(frames, meta.height, meta.width, meta.channels, meta.conditioning)
    return clip_speed(x, flow or build_flow("default"), spec or MotionSpeed())
