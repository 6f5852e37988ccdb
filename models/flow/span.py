"""A flow over a span of frames: each flow the models see is the vector mean of the last ``span`` flows
between consecutive frames (fewer at a stream's start), so about the displacement over ``span`` frames,
per frame.

Why: a low-bitrate H.264 stream (CRF 42) moves a small object's blocks in jumps, still for a frame or two
and then all at once, so consecutive-frame flow reads a walker as standing and then racing, and a fast
object's speed sinks among them. Over three frames the jumps add up to the motion again. Measured on
Ped2 (the worst 16x16 patch of TV-L1 speed as the score, 12 test clips pooled, raw): consecutive frames
0.968 clean / 0.773 at CRF 42, the mean of three 0.973 / 0.869 (docs/robustness-log.md, "CRF 42 is a
jerky flow"). Causal: a served frame waits for no later frame. Part of the flow spec, so training (its flow
cache and windows), export and serving average the same flows.
"""

from __future__ import annotations

import torch

MAX_SPAN = 8  # a flow of more frames than this smears a walker's path (8 frames: a third of a second at 25 fps)


def check_span(span: object) -> int:
    """``span`` as an int in [1, :data:`MAX_SPAN`], else ValueError naming it."""
    if isinstance(span, bool) or not isinstance(span, int) or not 1 <= span <= MAX_SPAN:
        raise ValueError(f"flow parameter 'span' must be an int in [1, {MAX_SPAN}], got {span!r}")
    return span


def trailing_mean(flows: torch.Tensor, span: int) -> torch.Tensor:
    """(N, 2, H, W) consecutive flows -> the same shape, ``out[i]`` the mean of ``flows[max(0, i-span+1):i+1]``
    (summed newest first, the same for a whole clip and for a stream's last few flows)."""
    if span == 1 or len(flows) == 0:
        return flows
    total, count = flows.clone(), torch.ones(len(flows), dtype=flows.dtype, device=flows.device)
    for back in range(1, min(span, len(flows))):
        total[back:] += flows[:-back]
        count[back:] += 1
    return total / count.reshape(-1, *(1,) * (flows.ndim - 1))
