"""An exported model ready to run: ONNX Runtime session + its metadata + the flow it was trained with.

The one inference class every path uses (the engine behind cameras, uploads and ``amvad eval``): load once
(metadata checked against the contract's bounds, warmed up with one frame whose cost is kept as ``warmup``),
``run`` a batch of windows, get a named :class:`ModelOutput` back."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from pydantic import ValidationError

from models.contract import check_metadata
from models.flow import build_flow
from models.metadata import METADATA_KEY, ModelMetadata
from models.registry import resolve_model

from .device import pick_device
from .errors import Invalid
from .flows import compute_flows


class InvalidModelFile(Invalid):
    """An ONNX file that is not a usable amvad model: no amvad metadata, metadata that does not parse, or
    settings out of the contract's bounds (the message names the field, its value and the bound)."""


def cost_clock(device: torch.device) -> Callable[[], float]:
    """The clock a model's cost is read on. On a CPU: the CPU time of the thread that runs the work (the
    engine's stage threads, or the thread measuring a model at load), so other work on the same cores (more
    cameras, a fit job) does not count against a model; with 1 thread per stage (2 cores) PyTorch and ONNX
    Runtime run inline in that thread. On CUDA: wall time, synchronised."""
    return time.thread_time if device.type == "cpu" else time.perf_counter


@dataclass(frozen=True)
class FrameCost:
    """Seconds one frame of a model costs on :func:`cost_clock`: its flow (one pair) and the model (one
    window), batch 1."""
    flow_s: float
    model_s: float

    @property
    def seconds(self) -> float:
        return self.flow_s + self.model_s

    def describe(self) -> str:
        return f"{self.seconds * 1000:.0f} ms (flow {self.flow_s * 1000:.0f} + model {self.model_s * 1000:.0f})"


@dataclass(frozen=True)
class ModelOutput:
    """Named outputs of one batch (see models/contract.py)."""
    components: np.ndarray   # (B, K)
    heatmap: np.ndarray      # (B, 1, H, W)
    prediction: np.ndarray   # (B, C, H, W)


def file_sha256(path: Path) -> str:
    """Content hash of a model file: what identifies a model (running statistics are kept per hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(2 ** 20):
            digest.update(chunk)
    return digest.hexdigest()


class ExportedModel:
    """Loads a bundled model name or ``.onnx`` path; CUDA execution provider when available."""

    def __init__(self, model: str | Path = "ped2", *, device: torch.device | None = None,
                 threads: int | None = None) -> None:
        self.path = resolve_model(model)
        self.sha256 = file_sha256(self.path)
        self.device = device or pick_device()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:  # a fixed share of the cores (the engine runs flow beside the model): no idle spinning
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        self.meta = read_metadata(self.session, self.path)
        self.flow = build_flow(**self.meta.flow).to(self.device).eval()
        m = self.meta
        self.frame_shape = (m.clip_len, m.channels, m.height, m.width)
        self.flow_shape = (m.clip_len - 1, 2, m.height, m.width)
        self.mask_shape = (1, m.height, m.width)
        # models exported before masks existed take no mask input; they score every pixel
        self.takes_mask = "mask" in {i.name for i in self.session.get_inputs()}
        # the first frame: it warms both up, and its cost (one-time set-up included) bounds a warm frame's
        self.warmup = self.measure()

    @torch.no_grad()
    def measure(self) -> FrameCost:
        """Time one frame on this model's device (:func:`cost_clock`): the flow of one pair of frames, then
        the model on one window (batch 1, random pixels), as the engine runs them."""
        m = self.meta
        clock = cost_clock(self.device)
        gen = torch.Generator().manual_seed(0)
        pair = torch.rand(2, 1, m.channels, m.height, m.width, generator=gen).to(self.device)
        frames = torch.rand(1, *self.frame_shape, generator=gen).to(self.device)
        flows = torch.zeros(1, *self.flow_shape, device=self.device)
        self._sync()
        t0 = clock()
        self.flow(pair[0], pair[1])
        self._sync()
        t1 = clock()
        self.run_tensors(frames, flows)
        return FrameCost(t1 - t0, clock() - t1)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, frames: np.ndarray, flows: np.ndarray, mask: np.ndarray | None = None) -> ModelOutput:
        """Score a batch of windows: frames (B, T, C, H, W) in [0, 1], flows (B, T-1, 2, H, W) pixels, mask
        (B, 1, H, W) in [0, 1] (None: every pixel counts)."""
        if frames.ndim != 5 or frames.shape[1:] != self.frame_shape:
            raise ValueError(f"frames must have shape (B, {self.frame_shape}), got {frames.shape}")
        if flows.ndim != 5 or flows.shape[1:] != self.flow_shape or len(flows) != len(frames):
            raise ValueError(f"flows must have shape ({len(frames)}, {self.flow_shape}), got {flows.shape}")
        feed = {"frames": np.ascontiguousarray(frames, dtype=np.float32),
                "flows": np.ascontiguousarray(flows, dtype=np.float32)}
        if self.takes_mask:
            feed["mask"] = (np.ones((len(frames), *self.mask_shape), np.float32) if mask is None
                            else np.ascontiguousarray(mask, dtype=np.float32))
        elif mask is not None:
            raise ValueError(f"{self.path.name} was exported before masks; re-export it (amvad export --onnx)")
        return ModelOutput(*self.session.run(None, feed))

    def run_tensors(self, frames: torch.Tensor, flows: torch.Tensor, mask: torch.Tensor | None = None) -> ModelOutput:
        """Like :meth:`run` for contiguous float32 tensors that may live on the GPU: ONNX Runtime reads
        them in place through IO binding (no copy to the host and back); outputs come back on the host."""
        if tuple(frames.shape[1:]) != self.frame_shape or tuple(flows.shape[1:]) != self.flow_shape:
            raise ValueError(f"frames/flows must have shapes (B, {self.frame_shape}) and (B, {self.flow_shape}), "
                             f"got {tuple(frames.shape)} and {tuple(flows.shape)}")
        binding = self.session.io_binding()
        inputs = {"frames": frames, "flows": flows}
        if self.takes_mask:
            inputs["mask"] = (torch.ones(len(frames), *self.mask_shape, device=frames.device) if mask is None
                              else mask)
        elif mask is not None:
            raise ValueError(f"{self.path.name} was exported before masks; re-export it (amvad export --onnx)")
        tensors = {name: t.float().contiguous() for name, t in inputs.items()}
        if frames.is_cuda:
            torch.cuda.current_stream(frames.device).synchronize()  # ORT reads on its own stream
        for name, t in tensors.items():
            binding.bind_input(name, t.device.type, t.device.index or 0, np.float32, tuple(t.shape), t.data_ptr())
        for name in ("components", "heatmap", "prediction"):
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return ModelOutput(*binding.copy_outputs_to_cpu())

    @torch.no_grad()
    def compute_flows(self, frames: np.ndarray, batch: int = 32) -> np.ndarray:
        """Flow between consecutive preprocessed frames: (N, C, H, W) -> (N-1, 2, H, W)."""
        return compute_flows(self.flow, frames, self.device, batch)


def read_metadata(session: ort.InferenceSession, path: Path) -> ModelMetadata:
    """The amvad metadata of a loaded ONNX file, parsed and within the contract's bounds (InvalidModelFile
    naming the field otherwise)."""
    meta_map = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta_map:
        raise InvalidModelFile(f"{path.name}: not an amvad model (no {METADATA_KEY!r} metadata)")
    try:
        meta = ModelMetadata.model_validate(json.loads(meta_map[METADATA_KEY]))
    except json.JSONDecodeError as exc:
        raise InvalidModelFile(f"{path.name}: metadata {METADATA_KEY!r} is not JSON ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'metadata'}: {e['msg']}"
                             + ("" if e["type"] == "missing" else f" (got {str(e.get('input'))[:60]})")
                             for e in exc.errors()[:5])
        raise InvalidModelFile(f"{path.name}: metadata field {problems}") from None
    try:
        check_metadata(meta)
    except ValueError as exc:
        raise InvalidModelFile(f"{path.name}: metadata {exc}") from None
    return meta
