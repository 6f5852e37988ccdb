"""An exported model ready to run: ONNX Runtime session + its metadata + the flow it was trained with.

The one inference class every path uses (the engine behind cameras, uploads and ``amvad eval``): load once
(warmed up), ``run`` a batch of windows, get a named :class:`ModelOutput` back."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.flow import build_flow
from models.metadata import METADATA_KEY, ModelMetadata
from models.registry import resolve_model

from .device import pick_device
from .flows import compute_flows


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
        meta_map = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta_map:
            raise ValueError(f"{self.path}: not an amvad model (no {METADATA_KEY!r} metadata)")
        self.meta = ModelMetadata.model_validate(json.loads(meta_map[METADATA_KEY]))
        self.flow = build_flow(**self.meta.flow).to(self.device).eval()
        m = self.meta
        self.frame_shape = (m.clip_len, m.channels, m.height, m.width)
        self.flow_shape = (m.clip_len - 1, 2, m.height, m.width)
        self.mask_shape = (1, m.height, m.width)
        # models exported before masks existed take no mask input; they score every pixel
        self.takes_mask = "mask" in {i.name for i in self.session.get_inputs()}
        self.run(np.zeros((1, *self.frame_shape), np.float32), np.zeros((1, *self.flow_shape), np.float32))

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
