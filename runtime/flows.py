"""Optical flow over the consecutive frames of a whole clip (training data, flow caches, reference
scoring); live streams get theirs frame by frame from the inference engine, with the same estimator."""

from __future__ import annotations

import numpy as np
import torch

from amvad.models.flow import FlowEstimator, trailing_mean


@torch.no_grad()
def compute_flows(flow: FlowEstimator, frames: np.ndarray, device: torch.device,
                  batch: int = 32) -> np.ndarray:
    """Batched flow over consecutive frames, (N, C, H, W) float32 in [0, 1] -> (N-1, 2, H, W) pixels;
    ``out[i]`` is the flow from frame i to frame i + 1, averaged over the estimator's span."""
    out = []
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    for s in range(0, len(frames) - 1, batch):
        e = min(s + batch, len(frames) - 1)
        prev, nxt = x[s:e].to(device), x[s + 1:e + 1].to(device)
        out.append(flow(prev, nxt).float().cpu())
    if not out:
        return np.zeros((0, 2, *frames.shape[2:]), np.float32)
    return trailing_mean(torch.cat(out), flow.span).numpy()
