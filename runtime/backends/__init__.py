"""Inference backends behind one small interface: what runs an exported model's ONNX graph (and, where it
can, its flow).

The ONNX file is the one artifact; a backend only decides how it is executed:

* ``onnxruntime``: ONNX Runtime, CPU or CUDA (IO binding reads GPU tensors in place). Precision fp32.
* ``openvino``: OpenVINO on the CPU, fp32 or bf16 (``INFERENCE_PRECISION_HINT``; native on CPUs with
  AVX-512 BF16 or AMX). It also runs the TV-L1 flow as a traced graph (:mod:`models.flow.graph`), always
  in fp32 (in bf16 the flow is off by up to a pixel). Compiled models are cached on disk.

``auto`` (the default) picks by rule: on CUDA, ONNX Runtime; on a CPU, OpenVINO when it is installed
(measured on the bundled model, 1 thread: fp32 13 ms vs ONNX Runtime's 17 ms, bf16 5.5 ms; flow 8 vs
15 ms), else ONNX Runtime. A reduced precision runs only when the model carries a passing parity record
for it (:mod:`runtime.parity`); otherwise fp32, and the model says why (:attr:`Precision.note`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from .base import Backend, BackendUnavailable, Precision

BackendName = Literal["auto", "onnxruntime", "openvino"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16")
__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendUnavailable", "Precision", "available", "choose_backend",
           "default_cache_dir", "graph_flow", "native_precisions", "open_backend"]


def available(name: str) -> bool:
    """Whether a backend's package (named as the backend) is installed, without importing it (OpenVINO takes
    ~0.5 s)."""
    return importlib.util.find_spec(name) is not None


def choose_backend(requested: str, device: torch.device) -> str:
    """The backend ``requested`` names, or for ``auto`` the rule in the module docstring; a named backend
    that cannot run here raises :class:`BackendUnavailable`."""
    if requested == "auto":
        return "openvino" if device.type == "cpu" and available("openvino") else "onnxruntime"
    if requested not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {requested!r}; known: {', '.join(BACKENDS)}")
    if not available(requested):
        raise BackendUnavailable(f"backend {requested!r} is not installed (pip install {requested})")
    if requested == "openvino" and device.type != "cpu":
        raise BackendUnavailable(f"backend 'openvino' runs on the CPU here, not on {device}")
    return requested


def native_precisions(backend: str, device: torch.device) -> tuple[str, ...]:
    """Reduced precisions the hardware runs natively with this backend, fastest first."""
    if backend == "openvino":
        from .ov import cpu_capabilities
        return ("bf16",) if "BF16" in cpu_capabilities() else ()
    return ()


def default_cache_dir() -> Path:
    """Where compiled models and flow graphs are cached when no directory is set: ``$AMVAD_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/amvad``, else ``~/.cache/amvad``."""
    if os.environ.get("AMVAD_CACHE_DIR"):
        return Path(os.environ["AMVAD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amvad"


def open_backend(name: str, path: Path, *, device: torch.device, threads: int | None, precision: str,
                 cache_dir: Path | None) -> Backend:
    """Load ``path`` on backend ``name`` (already chosen) at ``precision`` (already resolved)."""
    if name == "openvino":
        from .ov import OpenVinoBackend
        return OpenVinoBackend(path, threads=threads, precision=precision, cache_dir=cache_dir or default_cache_dir())
    from .ort import OrtBackend
    if precision != "fp32":
        raise BackendUnavailable(f"backend 'onnxruntime' runs fp32 here, not {precision}")
    return OrtBackend(path, device=device, threads=threads)


def graph_flow(backend: str, flow: torch.nn.Module, shape: tuple[int, int, int], *, threads: int | None,
               cache_dir: Path | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The flow run by ``backend`` as a graph, or None where the backend runs no flow (ONNX Runtime: the
    PyTorch flow is as fast there) or the estimator does not trace (DIS)."""
    from amvad.models.flow.graph import exportable
    if backend != "openvino" or not exportable(flow):
        return None
    from .ov import OpenVinoFlow
    return OpenVinoFlow(flow, shape, threads=threads, cache_dir=cache_dir or default_cache_dir())
