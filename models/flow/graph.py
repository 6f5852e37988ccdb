"""A flow estimator as an ONNX graph, so an inference runtime (OpenVINO) can run the very same flow.

Why: the TV-L1 solver is ~2,400 small tensor operations per frame pair; in PyTorch each one pays the
dispatcher's overhead, so on a CPU the flow costs about twice its arithmetic. Traced once at a fixed image
size (the primal-dual loop unrolled), the same operations run in a graph runtime that fuses them. The graph
computes what the estimator computes (same algorithm, same parameters, float32): ``amvad flow-check
--backend openvino`` and ``tests/models/test_flow_graph.py`` hold it to the PyTorch estimator.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from .tvl1 import FlowEstimator, TVL1Flow

# Bump when the traced graph of the same estimator would change (cached graphs are keyed by it).
GRAPH_VERSION = 2
OPSET = 17
INPUTS = ("prev", "nxt")
OUTPUT = "flow"


def exportable(flow: FlowEstimator) -> bool:
    """Estimators that trace to a graph: TV-L1 (plain tensor operations). DIS runs in OpenCV, so no."""
    return isinstance(flow, TVL1Flow)


def graph_key(flow: FlowEstimator, channels: int, height: int, width: int) -> str:
    """What names a cached graph: the estimator's pair parameters (its span is applied outside the graph),
    the input size and :data:`GRAPH_VERSION`."""
    spec = json.dumps({"flow": flow.pair_spec, "size": [channels, height, width], "graph": GRAPH_VERSION,
                       "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    return f"{flow.name}-{height}x{width}x{channels}-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def export_flow(flow: FlowEstimator, channels: int, height: int, width: int, dst: str | Path) -> None:
    """Trace ``flow`` at (channels, height, width) to an ONNX graph at ``dst``: inputs ``prev`` and ``nxt``
    (1, C, H, W) in [0, 1], output ``flow`` (1, 2, H, W) in pixels. One pair, every shape fixed: with a
    dynamic batch OpenVINO cannot fold the ~2,000 shape computations of the unrolled solver and the graph
    ran 2-4x slower (measured at 128x192); on a CPU a batch gains nothing anyway, so pairs run one by one."""
    if not exportable(flow):
        raise ValueError(f"flow {flow.spec} cannot be exported to a graph (only tvl1 can)")
    example = torch.rand(2, 1, channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # the pyramid's sizes are Python numbers taken from the traced shapes: constant for this size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(flow.eval(), (example[0], example[1]), str(dst), input_names=list(INPUTS),
                          output_names=[OUTPUT], opset_version=OPSET, dynamo=False)
