"""ONNX Runtime: the CPU provider everywhere, the CUDA provider first when the model's device is a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from .base import Backend


class OrtBackend(Backend):
    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: Path, *, device: torch.device, threads: int | None) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:  # a fixed share of the cores (the engine runs flow beside the model): no idle spinning
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_names = frozenset(i.name for i in self.session.get_inputs())
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feed)

    def run_tensors(self, feed: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Contiguous float32 tensors read in place through IO binding (no copy of GPU tensors to the host
        and back); outputs come back on the host."""
        binding = self.session.io_binding()
        tensors = {name: t.float().contiguous() for name, t in feed.items()}
        if any(t.is_cuda for t in tensors.values()):
            torch.cuda.synchronize()  # ORT reads on its own stream
        for name, t in tensors.items():
            binding.bind_input(name, t.device.type, t.device.index or 0, np.float32, tuple(t.shape), t.data_ptr())
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.session.get_providers()}
