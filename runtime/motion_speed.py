"""The runtime's own score component ``motion_speed`` (a model's metadata asks for it with ``speed``,
:class:`~models.metadata.MotionSpeed`): how fast the fastest part of the picture moves, learned from nothing.

Per frame t, the model's flow from frame t - ``gap`` to frame t (both as the model takes them: resized,
conditioned), its speed per pixel divided by ``gap``; per ``patch`` x ``patch`` patch (half a patch apart)
the mean speed; each patch's speed averaged over the last ``window`` frames that have one; the component is
the fastest patch. Its statistics are taken from normal footage like the graph's components', so it scores
how much faster than the footage's usual walkers something moves.

Why beside the networks: a low-bitrate stream (H.264 CRF 42) moves a small object's blocks in jumps; over
frames 3 apart and 8 frames' mean the jumps add up to the motion again, where the networks, which see
consecutive flows, lose it. Measured on Ped2's 12 test clips (docs/robustness-log.md, "What CRF 42 leaves"):
this score alone reads causal AUC 0.956 clean and 0.926 at CRF 42, where the bundled models read 0.83.

The engine computes it frame by frame (runtime/engine.py), :func:`clip_speed` a whole clip's at once; both
through :func:`speed_maps` and the flow span's ``trailing_mean``, so they sum in the same order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from amvad.models.flow import FlowEstimator, trailing_mean
from amvad.models.metadata import MotionSpeed

BATCH = 32  # frame pairs per flow call of a whole clip


def speed_maps(flows: torch.Tensor, spec: MotionSpeed, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 2, H, W) flows over ``spec.gap`` frames -> (B, P, Q) each patch's mean speed in px per frame;
    ``weight`` (B, 1, H, W) in [0, 1]: a pixel's share (a stream's mask, a stabilised frame's own picture)."""
    speed = flows.float().norm(dim=1, keepdim=True) / spec.gap
    if weight is not None:
        speed = speed * weight
    return F.avg_pool2d(speed, spec.patch, max(1, spec.patch // 2))[:, 0]


def window_speed(maps: torch.Tensor, spec: MotionSpeed) -> torch.Tensor:
    """(N, P, Q) consecutive frames' maps -> (N,): each frame's fastest patch of its trailing mean."""
    return trailing_mean(maps, spec.window).flatten(1).amax(1)


@torch.no_grad()
def clip_speed(x: torch.Tensor, flow: FlowEstimator, spec: MotionSpeed) -> np.ndarray:
    """(N, C, H, W) a clip's frames as the model takes them -> (N,) the component of every frame. The first
    ``gap`` frames, which have no frame that far back, take frame ``gap``'s (the engine scores no frame
    before its window is full, and a window is longer than the gap)."""
    gap, n = spec.gap, len(x)
    if n <= gap:
        raise ValueError(f"{n} frames: a speed over {gap} frames needs more")
    flows = torch.cat([flow(x[i:min(i + BATCH, n - gap)], x[i + gap:min(i + BATCH, n - gap) + gap])
                       for i in range(0, n - gap, BATCH)])
    speed = window_speed(speed_maps(flows, spec), spec).double().cpu().numpy()
    return np.concatenate([np.repeat(speed[:1], gap), speed])
