"""OpenVINO on the CPU: the model at fp32 or bf16, and the TV-L1 flow as a traced fp32 graph.

One ``openvino.Core`` per process. Compiled models are cached in ``<cache_dir>/openvino`` (OpenVINO keys
them by the graph's content and the settings); traced flow graphs in ``<cache_dir>/flow``. With one thread
OpenVINO runs a request inline in the calling thread and releases the GIL meanwhile (checked: the thread's
CPU time equals the wall time, and a Python thread beside it keeps running), which is what the engine's
two stage threads and its CPU-time budget expect. Threads are not pinned to cores: the flow and model
stages share two cores with decoding and publishing.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
import torch

from amvad.models.flow.graph import export_flow, graph_key

from ..files import atomic_path
from .base import Backend

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


@functools.cache
def core():
    import openvino as ov
    return ov.Core()


@functools.cache
def cpu_capabilities() -> frozenset[str]:
    """What the CPU plugin can run natively (``BF16`` on AVX-512 BF16 / AMX CPUs, ``FP16``, ``INT8``...)."""
    return frozenset(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_cpu(model: str | Path, *, threads: int | None, precision: str, cache_dir: Path,
                batch_one: bool = False):
    """Compile an ONNX file for the CPU: one stream, ``threads`` threads (default: OpenVINO's), no pinning;
    ``batch_one``: every input's first dimension fixed to 1 (the caller runs a batch row by row)."""
    if batch_one:
        graph = core().read_model(str(model))
        graph.reshape({i.get_any_name(): [1, *list(i.get_partial_shape())[1:]] for i in graph.inputs})
        model = graph
    cache = cache_dir / "openvino"
    cache.mkdir(parents=True, exist_ok=True)
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "ENABLE_CPU_PINNING": False,
              "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision], "CACHE_DIR": str(cache)}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core().compile_model(model if batch_one else str(model), "CPU", config)


class _Requests:
    """One infer request per calling thread (a request is not safe to share; the engine's stage thread and a
    load-time measurement may use one model at once)."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self._local = threading.local()

    def infer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feed)
        return [np.array(result[o]) for o in self.compiled.outputs]

    def infer_rows(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A batch through a graph compiled for batch 1, one row at a time, outputs stacked again."""
        rows = [self.infer({k: v[i:i + 1] for k, v in feed.items()}) for i in range(len(next(iter(feed.values()))))]
        return [np.concatenate(parts) for parts in zip(*rows)]


class OpenVinoBackend(Backend):
    """The model compiled for batch 1 and run window by window: with a dynamic batch OpenVINO keeps the
    buffers of every batch size it has seen (15-78 MB each, measured on ``ped2`` for sizes 1-16, never
    given back: a service's memory rose in steps for half an hour as 8 cameras met new batch sizes), and
    row by row is faster besides (bf16, 8 windows: 36.6 ms vs 48.1 ms as one batch)."""
    name = "openvino"

    def __init__(self, path: Path, *, threads: int | None, precision: str, cache_dir: Path) -> None:
        self.precision = precision
        self.compiled = compile_cpu(path, threads=threads, precision=precision, cache_dir=cache_dir,
                                    batch_one=True)
        self.input_names = frozenset(i.get_any_name() for i in self.compiled.inputs)
        self._requests = _Requests(self.compiled)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._requests.infer_rows(feed)

    def describe(self) -> dict:
        return {**super().describe(), "device": "CPU",
                "inference_precision": str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))}


@functools.lru_cache(maxsize=16)
def _compiled_flow(graph: str, threads: int | None, cache_dir: Path):
    """One compiled flow graph per graph, threads and cache in the process, shared by every model with that
    flow and input size: compiled, a 128x192 TV-L1 graph holds ~300 MB (its unrolled solver's buffers)."""
    return compile_cpu(graph, threads=threads, precision="fp32", cache_dir=cache_dir)


class OpenVinoFlow:
    """A flow estimator run as its traced graph (fp32): called like the estimator, ``(prev, nxt)`` tensors
    (B, C, H, W) in [0, 1] -> flow (B, 2, H, W), one pair at a time (the graph's shapes are fixed,
    :func:`models.flow.graph.export_flow`). The graph is traced once per estimator and input size and kept
    in ``<cache_dir>/flow``."""

    def __init__(self, flow: torch.nn.Module, shape: tuple[int, int, int], *, threads: int | None,
                 cache_dir: Path) -> None:
        channels, height, width = shape
        graph = cache_dir / "flow" / f"{graph_key(flow, channels, height, width)}.onnx"
        if not graph.is_file():
            with atomic_path(graph) as tmp:
                export_flow(flow, channels, height, width, tmp)
        self._requests = _Requests(_compiled_flow(str(graph), threads, cache_dir))

    def __call__(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        feed = {"prev": prev.float().cpu().numpy(), "nxt": nxt.float().cpu().numpy()}
        return torch.from_numpy(self._requests.infer_rows(feed)[0])
