"""AMMC-Net (Cai et al., AAAI 2021): appearance-motion memory consistency network.

Appearance encoder on frames 1..t-1 and motion encoder on flows 1..t-2 (U-Net-like, 3 scales, Tanh),
an appearance and a motion memory pool with top-K retrieval, cross-modal feature transfer (AMFT),
feature aggregation before each decoder, and decoders for frame t and flow t-1 -> t.
Score: S = (1 - lambda_c) * H(PSNR) + lambda_c * H(commit error), both oriented higher = anomalous.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .contract import AnomalyModel, masked_mean, neg_psnr, shrink_mask
from .flow import build_flow
from .layers import BOTTLENECK_STRIDE, Decoder, Encoder, gradient_loss


class MemPool(nn.Module):
    """Memory M in R^{N x D}; each spatial query retrieves its top-K nearest items (squared L2) and a
    1x1 conv fuses them into the memory-guided feature e. Items are learned by the commit loss."""

    def __init__(self, dim: int, items: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= items:
            raise ValueError(f"top_k must be in [1, items={items}], got {top_k}")
        self.items = nn.Parameter(torch.randn(items, dim) * 0.5)
        self.top_k = top_k
        self.fuse = nn.Conv2d(top_k * dim, dim, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, d, h, w = z.shape
        q = z.permute(0, 2, 3, 1).reshape(-1, d)
        dist = (q * q).sum(1, keepdim=True) - 2 * q @ self.items.t() + (self.items ** 2).sum(1)[None]
        idx = dist.topk(self.top_k, dim=1, largest=False).indices            # (BHW, K)
        picked = self.items[idx.reshape(-1)].reshape(b, h, w, self.top_k * d)
        return self.fuse(picked.permute(0, 3, 1, 2))


def commit_error(z: torch.Tensor, e: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared distance between encoder features and memory-guided features, over the
    feature cells the (full-resolution) mask keeps."""
    return masked_mean(((z - e) ** 2).mean(1, keepdim=True), shrink_mask(mask, BOTTLENECK_STRIDE))


def transfer_net(dim: int) -> nn.Sequential:
    """AMFT mapping network between the two modalities' memory-guided features."""
    return nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.Tanh(),
                         nn.Conv2d(dim, dim, 3, padding=1))


class AMMCNet(AnomalyModel):
    method = "ammc"
    component_names = ("neg_psnr", "commit")

    def __init__(self, *, clip_len: int = 5, channels: int = 1, height: int = 128, width: int = 192,
                 flow_scale: float = 4.0, base_width: int = 16, mem_items: int = 20, top_k: int = 2,
                 beta: float = 0.25, lambda_c: float = 0.5, w_int: float = 1.0, w_grad: float = 1.0,
                 w_flow_pred: float = 1.0, w_commit: float = 0.25, w_frame_flow: float = 0.0,
                 w_adv: float = 0.05) -> None:
        super().__init__(clip_len=clip_len, channels=channels, height=height, width=width,
                         flow_scale=flow_scale)
        self.beta = beta
        self.w_int, self.w_grad, self.w_flow_pred = w_int, w_grad, w_flow_pred
        self.w_commit, self.w_frame_flow = w_commit, w_frame_flow
        self.default_weights = (1.0 - lambda_c, lambda_c)
        self.adversarial_weight = w_adv
        w = base_width
        self.app_enc = Encoder((clip_len - 1) * channels, w, act="tanh")
        self.mot_enc = Encoder((clip_len - 2) * 2, w, act="tanh")
        d = self.app_enc.out_channels
        self.app_mem = MemPool(d, mem_items, top_k)
        self.mot_mem = MemPool(d, mem_items, top_k)
        self.app_to_mot = transfer_net(d)
        self.mot_to_app = transfer_net(d)
        # Aggregation F(transferred, memory, encoder) before each decoder.
        self.app_agg = nn.Sequential(nn.Conv2d(3 * d, d, 1), nn.Tanh())
        self.mot_agg = nn.Sequential(nn.Conv2d(3 * d, d, 1), nn.Tanh())
        self.app_dec = Decoder(d, w, channels, skip_channels=self.app_enc.skip_channels, act="tanh")
        self.mot_dec = Decoder(d, w, 2, skip_channels=self.mot_enc.skip_channels, act="tanh",
                               out_act=None)
        # Stage 1 trains without AMFT; stage 2 adds it. Saved with the weights so export knows.
        self.register_buffer("stage", torch.tensor(1, dtype=torch.int64))
        # Flow loss on the predicted frame uses a cheap estimator of our own flow module.
        self.loss_flow = build_flow("tvl1", levels=3, warps=1, iterations=5) if w_frame_flow > 0 else None

    def set_stage(self, stage: int) -> None:
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.stage.fill_(stage)

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_inputs(frames, flows)
        v = self.split(frames, flows)
        z_a, skips_a = self.app_enc(v["past"])
        z_m, skips_m = self.mot_enc(v["past_flows"])
        e_a, e_m = self.app_mem(z_a), self.mot_mem(z_m)
        if int(self.stage) == 2:
            t_a, t_m = self.mot_to_app(e_m), self.app_to_mot(e_a)
        else:
            t_a, t_m = torch.zeros_like(e_a), torch.zeros_like(e_m)
        pred = self.app_dec(self.app_agg(torch.cat([t_a, e_a, z_a], 1)), skips_a)
        pred_flow = self.mot_dec(self.mot_agg(torch.cat([t_m, e_m, z_m], 1)), skips_m)
        return {"prediction": pred, "pred_flow": pred_flow, "z_app": z_a, "e_app": e_a,
                "z_mot": z_m, "e_mot": e_m, "target": v["target"], "target_flow": v["target_flow"],
                "last": v["last"]}

    def losses(self, out: dict[str, torch.Tensor], frames: torch.Tensor,
               flows: torch.Tensor) -> dict[str, torch.Tensor]:
        pred, target = out["prediction"], out["target"]
        terms = {
            "intensity": self.w_int * F.mse_loss(pred, target),
            "gradient": self.w_grad * gradient_loss(pred, target),
            "flow_pred": self.w_flow_pred * F.smooth_l1_loss(out["pred_flow"], out["target_flow"]),
            "commit": self.w_commit * (self._commit_loss(out["z_app"], out["e_app"])
                                       + self._commit_loss(out["z_mot"], out["e_mot"])),
        }
        if self.loss_flow is not None and int(self.stage) == 2:
            last = (out["last"] + 1) / 2
            with torch.no_grad():
                real = self.loss_flow(last, (target + 1) / 2)
            terms["frame_flow"] = self.w_frame_flow * F.l1_loss(self.loss_flow(last, (pred + 1) / 2), real)
        return terms

    def _commit_loss(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """VQ-style commit loss ||sg[z] - e||^2 + beta ||z - sg[e]||^2."""
        return F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())

    def score(self, frames: torch.Tensor, flows: torch.Tensor, mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_mask(frames, mask)
        out = self.forward(frames, flows)
        pred, target = out["prediction"], out["target"]
        commit = commit_error(out["z_app"], out["e_app"], mask) + commit_error(out["z_mot"], out["e_mot"], mask)
        components = torch.stack([neg_psnr(pred, target, mask), commit], 1)
        frame_err = ((pred - target) ** 2).mean(1, keepdim=True)
        flow_err = ((out["pred_flow"] - out["target_flow"]) ** 2).sum(1, keepdim=True)
        heatmap = frame_err + flow_err
        return components, heatmap if mask is None else heatmap * mask, (pred + 1) / 2
