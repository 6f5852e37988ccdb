"""An exported model ready to run: its ONNX graph on an inference backend + its metadata + the flow it was
trained with.

The one inference class every path uses (the engine behind cameras, uploads and ``amvad eval``): load once
(metadata checked against the contract's bounds, warmed up with one frame whose cost is kept as ``warmup``),
``run`` a batch of windows, get a named :class:`ModelOutput` back. Which backend and precision run it is
chosen here (:mod:`runtime.backends`, gated by :mod:`runtime.parity`); every caller gets the same record."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from pydantic import ValidationError

from amvad.models.contract import check_metadata
from amvad.models.flow import build_flow
from amvad.models.metadata import METADATA_KEY, ModelMetadata
from amvad.models.registry import resolve_model

from . import parity
from .backends import Precision, choose_backend, graph_flow, native_precisions, open_backend
from .device import pick_device
from .errors import Invalid
from .flows import compute_flows

log = logging.getLogger("amvad.model")


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
    """Seconds one frame of a model costs on :func:`cost_clock`: its flow (one pair; two with the runtime's
    speed component) and the model (one window), batch 1."""
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
    components: np.ndarray   # (B, K) the graph's; the engine adds the runtime's speed (meta.speed) after them
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
    """Loads a bundled model name or ``.onnx`` path on ``backend`` (``auto``: see :mod:`runtime.backends`)
    at ``precision`` (``auto``: the fastest native one with a passing parity record, else fp32). ``gate``
    False skips the parity record (``amvad eval`` measuring a precision); ``flow_threads`` set the flow
    graph's threads where the backend runs the flow."""

    def __init__(self, model: str | Path = "ped2", *, device: torch.device | None = None,
                 threads: int | None = None, backend: str = "auto", precision: str = "auto",
                 cache_dir: Path | None = None, flow_threads: int | None = None, gate: bool = True) -> None:
        self.path = resolve_model(model)
        self.sha256 = file_sha256(self.path)
        self.device = device or pick_device()
        self.meta = read_metadata(self.path)
        backend_name = choose_backend(backend, self.device)
        self.precision = resolve_precision(precision, backend_name, self.device, self.path, self.sha256, gate)
        if self.precision.note:  # asked for by name: a warning; by ``auto``: for the record
            log.log(logging.INFO if precision == "auto" else logging.WARNING, "model %s: %s", self.path.name,
                    self.precision.note)
        self.backend = open_backend(backend_name, self.path, device=self.device, threads=threads,
                                    precision=self.precision.used, cache_dir=cache_dir)
        m = self.meta
        self.flow = build_flow(**m.flow).to(self.device).eval()
        # what the engine runs: the same flow as a graph on the backend where it can, else the module
        self.run_flow = graph_flow(backend_name, self.flow, (m.channels, m.height, m.width),
                                   threads=flow_threads or threads, cache_dir=cache_dir) or self.flow
        self.frame_shape = (m.clip_len, m.channels, m.height, m.width)
        self.flow_shape = (m.clip_len - 1, 2, m.height, m.width)
        self.mask_shape = (1, m.height, m.width)
        # models exported before masks existed take no mask input; they score every pixel
        self.takes_mask = "mask" in self.backend.input_names
        # the first frame: it warms both up, and its cost (one-time set-up included) bounds a warm frame's
        self.warmup = self.measure()

    def describe(self) -> dict:
        """How this model runs: backend, precision (and why, when not what was asked), flow."""
        return {**self.backend.describe(), "precision_requested": self.precision.requested,
                "precision_note": self.precision.note, "flow": self.flow.spec,
                "flow_runner": "pytorch" if self.run_flow is self.flow else f"{self.backend.name} graph"}

    @torch.no_grad()
    def measure(self) -> FrameCost:
        """Time one frame on this model's device (:func:`cost_clock`): the flow of its pairs of frames, then
        the model on one window (batch 1, random pixels), as the engine runs them."""
        m = self.meta
        clock = cost_clock(self.device)
        gen = torch.Generator().manual_seed(0)
        pairs = 2 if m.speed is not None else 1  # the speed component's flow rides in the same batch
        pair = torch.rand(2, pairs, m.channels, m.height, m.width, generator=gen).to(self.device)
        frames = torch.rand(1, *self.frame_shape, generator=gen).to(self.device)
        flows = torch.zeros(1, *self.flow_shape, device=self.device)
        self._sync()
        t0 = clock()
        self.run_flow(pair[0], pair[1])
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
        return ModelOutput(*self.backend.run(feed))

    def run_tensors(self, frames: torch.Tensor, flows: torch.Tensor, mask: torch.Tensor | None = None) -> ModelOutput:
        """Like :meth:`run` for float32 tensors that may live on the GPU (a GPU backend reads them in place;
        outputs come back on the host)."""
        if tuple(frames.shape[1:]) != self.frame_shape or tuple(flows.shape[1:]) != self.flow_shape:
            raise ValueError(f"frames/flows must have shapes (B, {self.frame_shape}) and (B, {self.flow_shape}), "
                             f"got {tuple(frames.shape)} and {tuple(flows.shape)}")
        inputs = {"frames": frames, "flows": flows}
        if self.takes_mask:
            inputs["mask"] = (torch.ones(len(frames), *self.mask_shape, device=frames.device) if mask is None
                              else mask)
        elif mask is not None:
            raise ValueError(f"{self.path.name} was exported before masks; re-export it (amvad export --onnx)")
        return ModelOutput(*self.backend.run_tensors(inputs))

    @torch.no_grad()
    def compute_flows(self, frames: np.ndarray, batch: int = 32) -> np.ndarray:
        """Flow between consecutive preprocessed frames: (N, C, H, W) -> (N-1, 2, H, W)."""
        return compute_flows(self.flow, frames, self.device, batch)


def resolve_precision(requested: str, backend: str, device: torch.device, path: Path, sha256: str,
                      gate: bool) -> Precision:
    """The precision a model runs at: fp32 unless a reduced one is native to ``backend`` on ``device`` and
    (with ``gate``) has a passing parity record; what was asked and why it was not granted, when so."""
    if requested == "fp32":
        return Precision("fp32", requested)
    native = native_precisions(backend, device)
    notes = []
    for candidate in native if requested == "auto" else (requested,):
        if candidate not in native:
            notes.append(f"{candidate} does not run natively with {backend} on this {device.type}")
            continue
        why = parity.passed(path, sha256, backend, candidate) if gate else None
        if why is None:
            return Precision(candidate, requested)
        notes.append(f"{candidate}: {why}")
    return Precision("fp32", requested, "; ".join(notes) + ("; running fp32" if notes else ""))


def read_metadata(path: str | Path) -> ModelMetadata:
    """The amvad metadata of an ONNX file, parsed and within the contract's bounds (InvalidModelFile
    naming the field otherwise)."""
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several kinds on a file that is not an ONNX model
        raise InvalidModelFile(f"{path.name}: not an ONNX model ({type(exc).__name__})") from None
    meta_map = {p.key: p.value for p in proto.metadata_props}
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
