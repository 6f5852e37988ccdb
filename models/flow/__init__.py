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
"""

from __future__ import annotations

import inspect
from typing import Any

from .dis import DISFlow
from .tvl1 import FlowEstimator, TVL1Flow

__all__ = ["FlowEstimator", "TVL1Flow", "DISFlow", "build_flow", "FLOW_NAMES"]

_ESTIMATORS: dict[str, type[FlowEstimator]] = {"tvl1": TVL1Flow, "dis": DISFlow}
FLOW_NAMES = ("default", *_ESTIMATORS)


def build_flow(name: str = "default", **params: Any) -> FlowEstimator:
    """Build a flow estimator by name; unknown names or params raise ValueError."""
    if not isinstance(name, str) or name not in FLOW_NAMES:
        raise ValueError(f"unknown flow name {name!r}; allowed: {list(FLOW_NAMES)}")
    if name == "default":
        if params:
            raise ValueError(f"flow 'default' takes no parameters, got {sorted(params)}; "
                             f"use name='tvl1' to change TV-L1 parameters")
        return TVL1Flow()
    cls = _ESTIMATORS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for flow {name!r}; allowed: {allowed}")
    return cls(**params)
