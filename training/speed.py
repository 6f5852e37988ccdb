"""``amvad speed``: the size/speed trade-off of a method, measured on this machine.

Exports an untrained network of the given size through the real export graph and times ONNX Runtime
(batch 1, as a live camera runs it) and the default flow at the same resolution.
"""

from __future__ import annotations

import io
import time

import numpy as np
import onnxruntime as ort
import torch

from amvad.models.flow import build_flow
from amvad.models.registry import build_model

from .export import export_onnx


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def measure(method: str, *, height: int, width: int, base_width: int, clip_len: int = 5,
            channels: int = 1, threads: int = 2, repeats: int = 20, flow: dict | None = None) -> dict:
    torch.set_num_threads(threads)
    model = build_model(method, clip_len=clip_len, channels=channels, height=height, width=width,
                        base_width=base_width).eval()
    frames = torch.rand(1, clip_len, channels, height, width)
    flows = torch.randn(1, clip_len - 1, 2, height, width)
    buf = io.BytesIO()
    export_onnx(model, frames, flows, buf)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"frames": frames.numpy(), "flows": flows.numpy(), "mask": np.ones((1, 1, height, width), np.float32)}
    estimator = build_flow(**(flow or {"name": "default"}))
    a, b = frames[:, -2], frames[:, -1]
    with torch.no_grad():
        flow_ms = _median_ms(lambda: estimator(a, b), repeats)
    model_ms = _median_ms(lambda: sess.run(None, feed), repeats)
    return {"method": method, "height": height, "width": width, "base_width": base_width,
            "params": sum(p.numel() for p in model.parameters()), "onnx_bytes": len(buf.getvalue()),
            "model_ms": round(model_ms, 2), "flow_ms": round(flow_ms, 2),
            "flow": estimator.spec, "threads": threads}
