"""OpenCV DIS optical flow (Kroeger et al., ECCV 2016) behind the :class:`FlowEstimator` interface.

Runs on the CPU through ``cv2.DISOpticalFlow``: inputs are converted to uint8 luminance, each batch item is
processed in turn, and the result is returned on the input's device. It is NOT differentiable: the output
is detached from the inputs (use ``"tvl1"`` where gradients through the flow are needed).
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import torch

from .tvl1 import FlowEstimator, check_pair, to_gray

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
DEFAULT_PRESET = "medium"


class DISFlow(FlowEstimator):
    """Dense Inverse Search flow from OpenCV; not differentiable."""

    name: ClassVar[str] = "dis"

    def __init__(self, preset: str = DEFAULT_PRESET) -> None:
        super().__init__()
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ValueError(f"dis parameter 'preset' must be one of {sorted(PRESETS)}, got {preset!r}")
        self.preset = preset

    def params(self) -> dict[str, Any]:
        return {"preset": self.preset}

    def work(self, height: int, width: int) -> int:
        """About one pass over the pixels (every preset runs in a few ms at the bundled models' size)."""
        return height * width

    @staticmethod
    def _to_uint8(x: torch.Tensor) -> np.ndarray:
        gray = to_gray(x.detach()).clamp(0.0, 1.0).mul(255.0).round()
        return gray[:, 0].to(device="cpu", dtype=torch.uint8).numpy()

    def forward(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        check_pair(prev, nxt)
        a, b = self._to_uint8(prev), self._to_uint8(nxt)
        # A fresh estimator per call: cheap, stateless between calls, and keeps the module deep-copyable.
        dis = cv2.DISOpticalFlow_create(PRESETS[self.preset])
        flows = [dis.calc(a[i], b[i], None) for i in range(a.shape[0])]
        out = torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).contiguous().float()
        return out.to(prev.device)
