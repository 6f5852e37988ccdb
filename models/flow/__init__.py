"""Optical flow estimators behind one interface (see :class:`FlowEstimator`).

``build_flow(name, **params)`` returns an ``nn.Module`` whose ``forward(prev, nxt)`` maps float images
``(B, 1 or 3, H, W)`` in [0, 1] to flow ``(B, 2, H, W)`` float32 in pixels (x then y, OpenCV's convention
``prev(y, x) ~ nxt(y + v, x + u)``), on the input's device. ``estimator.spec`` is a JSON-serialisable dict
and ``build_flow(**estimator.spec)`` rebuilds the same estimator; it is stored in exported model metadata
so that serving recomputes exactly the flow the model was trained with.

Names:
    ``"tvl1"``    pyramidal TV-L1 in PyTorch (batched, CPU or CUDA, differentiable); params ``levels``,
                  ``warps``, ``iterations``, ``lambda_``, ``tau``, ``theta``, ``scale_step``, ``median_filter``.
    ``"dis"``     OpenCV DIS (CPU, not differentiable); param ``preset`` in {"ultrafast", "fast", "medium"}.
    ``"default"`` TV-L1 with its default parameters, the flow the shipped model is trained with
                  (takes no params; its spec says ``"tvl1"``).

Every name also takes ``span`` (default 1): each flow served is the mean of that many consecutive flows
(:mod:`models.flow.span`; the estimator itself still measures one pair).

Parameters that set the work are bounded (a model's metadata carries them): each one by its estimator, and
the total per frame pair at a model's input size by :func:`check_flow_work`.
"""

from __future__ import annotations

import inspect
from typing import Any

from .dis import DISFlow
from .span import MAX_SPAN, check_span, trailing_mean
from .tvl1 import FlowEstimator, TVL1Flow

__all__ = ["FLOW_NAMES", "MAX_FLOW_WORK", "MAX_SPAN", "DISFlow", "FlowEstimator", "TVL1Flow", "build_flow",
           "check_flow_work", "trailing_mean"]

_ESTIMATORS: dict[str, type[FlowEstimator]] = {"tvl1": TVL1Flow, "dis": DISFlow}
FLOW_NAMES = ("default", *_ESTIMATORS)

# The most work per frame pair, in TV-L1 pixel-iterations (FlowEstimator.work): about 100x the bundled
# models' flow (128x192, 4 levels, 30 iterations: 0.98 M; 40 ms on one CPU core) and 2.4x the default flow
# at the largest `amvad fit` input (1024*1024 pixels: 42 M). 100 M takes 2-7 s a pair on one CPU core.
MAX_FLOW_WORK = 100_000_000


def build_flow(name: str = "default", span: int = 1, **params: Any) -> FlowEstimator:
    """Build a flow estimator by name, averaging ``span`` consecutive flows (:mod:`models.flow.span`; any
    estimator); unknown names or params raise ValueError."""
    if not isinstance(name, str) or name not in FLOW_NAMES:
        raise ValueError(f"unknown flow name {name!r}; allowed: {list(FLOW_NAMES)}")
    span = check_span(span)
    if name == "default":
        if params:
            raise ValueError(f"flow 'default' takes no parameters but span, got {sorted(params)}; "
                             f"use name='tvl1' to change TV-L1 parameters")
        estimator: FlowEstimator = TVL1Flow()
    else:
        cls = _ESTIMATORS[name]
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for flow {name!r}; allowed: {allowed + ['span']}")
        estimator = cls(**params)
    estimator.span = span
    return estimator


def check_flow_work(flow: FlowEstimator, height: int, width: int) -> int:
    """The flow's work per frame pair at ``height`` x ``width``; ValueError naming it and the bound when it is
    over :data:`MAX_FLOW_WORK`."""
    work = flow.work(height, width)
    if work > MAX_FLOW_WORK:
        raise ValueError(f"flow {flow.spec} at {height}x{width}: {work:,} pixel-iterations per frame pair "
                         f"(pyramid pixels x warps x iterations), over the bound {MAX_FLOW_WORK:,}")
    return work
