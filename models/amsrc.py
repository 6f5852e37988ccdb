"""AMSRC-Net (Huang et al., 2022): appearance-motion semantics representation consistency.

A frame stream (past frames) and a flow stream (flows among the past frames) are encoded to ReLU
bottleneck features that training pulls together (cosine consistency). Their flow-guided fusion feeds
a U-Net decoder that predicts frame t. At test time, low appearance-motion consistency and a poor
prediction both indicate an anomaly.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .contract import FLOW_SCALE, AnomalyModel, masked_mean, neg_psnr, shrink_mask
from .layers import BOTTLENECK_STRIDE, Decoder, Encoder, gradient_loss


def inconsistency_map(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - cosine similarity along channels: (B, D, h, w) x2 -> (B, 1, h, w), in [0, 1] for ReLU features.

    Written out (not ``F.cosine_similarity``) so it exports to plain ONNX ops."""
    dot = (a * b).sum(1, keepdim=True)
    na = (a * a).sum(1, keepdim=True).add(eps).sqrt()
    nb = (b * b).sum(1, keepdim=True).add(eps).sqrt()
    return 1.0 - dot / (na * nb)


class AMSRCNet(AnomalyModel):
    """Two-stream encoder + consistency loss + flow-guided fusion + frame-prediction decoder.

    forward outputs: ``pred`` (B, C, H, W) in [-1, 1]; ``fea_frame``, ``fea_flow`` (B, 4w, H/8, W/8);
    ``inconsistency`` (B, 1, H/8, W/8) = 1 - cos per bottleneck location.
    """

    method = "amsrc"
    component_names = ("inconsistency", "neg_psnr")
    default_weights = (0.5, 0.5)

    def __init__(self, *, clip_len: int, channels: int, height: int, width: int,
                 flow_scale: float = FLOW_SCALE, base_width: int = 16, lambda_int: float = 1.0,
                 lambda_grad: float = 1.0, lambda_sim: float = 1.0) -> None:
        super().__init__(clip_len=clip_len, channels=channels, height=height, width=width,
                         flow_scale=flow_scale)
        self.base_width = base_width
        self.lambda_int = lambda_int
        self.lambda_grad = lambda_grad
        self.lambda_sim = lambda_sim
        w = base_width
        self.frame_encoder = Encoder((clip_len - 1) * channels, w, act="relu")
        self.flow_encoder = Encoder((clip_len - 2) * 2, w, act="relu")
        self.decoder = Decoder(self.frame_encoder.out_channels, w, channels,
                               skip_channels=self.frame_encoder.skip_channels, act="relu",
                               out_act="tanh")

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_inputs(frames, flows)
        v = self.split(frames, flows)
        fea_frame, skips = self.frame_encoder(v["past"])
        fea_flow, _ = self.flow_encoder(v["past_flows"])
        # Flow-guided fusion: motion features gated by the appearance features.
        fused = fea_frame + torch.sigmoid(fea_frame) * fea_flow
        return {"pred": self.decoder(fused, skips), "fea_frame": fea_frame, "fea_flow": fea_flow,
                "inconsistency": inconsistency_map(fea_frame, fea_flow)}

    def losses(self, out: dict[str, torch.Tensor], frames: torch.Tensor,
               flows: torch.Tensor) -> dict[str, torch.Tensor]:
        target = self.split(frames, flows)["target"]
        pred = out["pred"]
        return {
            "intensity": self.lambda_int * ((pred - target) ** 2).mean(),
            "gradient": self.lambda_grad * gradient_loss(pred, target),
            "consistency": self.lambda_sim * out["inconsistency"].mean(),
        }

    def score(self, frames: torch.Tensor, flows: torch.Tensor, mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """components (B, 2) = (mean 1-cos over the unmasked bottleneck, -PSNR dB over unmasked pixels);
        heatmap = squared frame error (mean over channels, [-1, 1] units) + bilinearly upsampled 1-cos map,
        zero where masked; prediction in [0, 1]."""
        self.check_mask(frames, mask)
        out = self.forward(frames, flows)
        target = self.split(frames, flows)["target"]
        pred = out["pred"]
        inc = out["inconsistency"]
        inc_mean = masked_mean(inc, shrink_mask(mask, BOTTLENECK_STRIDE))
        components = torch.stack([inc_mean, neg_psnr(pred, target, mask)], 1)
        err = ((pred - target) ** 2).mean(1, keepdim=True)
        inc_up = F.interpolate(inc, size=(self.height, self.width), mode="bilinear",
                               align_corners=False)
        heatmap = err + inc_up.clamp_min(0.0)
        if mask is not None:
            heatmap = heatmap * mask
        prediction = ((pred + 1.0) * 0.5).clamp(0.0, 1.0)
        return components, heatmap, prediction
