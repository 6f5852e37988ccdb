"""AMMC-Net (Cai et al., AAAI 2021): appearance-motion memory consistency network.

Appearance encoder on frames 1..t-1 and motion encoder on the flows 1..t (U-Net-like, 3 scales, Tanh),
an appearance and a motion memory pool with top-K retrieval, cross-modal feature transfer (AMFT),
feature aggregation before each decoder, and decoders for frame t and flow t-1 -> t.

Score: the paper's S = (1 - lambda_c) * prediction error + lambda_c * commit error, each oriented higher =
anomalous, with two departures measured on Ped2 (model card ``models/bundled/ped2-ammc.md``): the pixel
prediction error is that of the frame *and* of the flow (half each), and every error is that of the worst
16x16 patch instead of the whole frame, so a small anomaly is not averaged away. The flow decoder sees the
memory-guided features alone (no encoder feature, no skips): a memory of normal motion can only give back
normal motion, while a decoder with the encoder's own features copies any motion it is shown.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .contract import AnomalyModel, patch_max, shrink_mask
from .flow import build_flow
from .layers import BOTTLENECK_STRIDE, Decoder, Encoder, frame_losses


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


COMMIT_PATCH = 2  # commit error is pooled over 2x2 bottleneck cells = a 16x16-pixel patch


def commit_map(z: torch.Tensor, e: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Squared distance between encoder and memory-guided features per bottleneck cell (B, 1, h, w),
    weighted by the share of each cell's pixels the (full-resolution) mask keeps."""
    err = ((z - e) ** 2).mean(1, keepdim=True)
    small = shrink_mask(mask, BOTTLENECK_STRIDE)
    return err if small is None else err * small


def transfer_net(dim: int) -> nn.Sequential:
    """AMFT mapping network between the two modalities' memory-guided features."""
    return nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.Tanh(),
                         nn.Conv2d(dim, dim, 3, padding=1))


class AMMCNet(AnomalyModel):
    method = "ammc"
    component_names = ("frame_patch", "commit_patch", "flow_patch")

    def __init__(self, *, clip_len: int = 5, channels: int = 1, height: int = 128, width: int = 192,
                 flow_scale: float = 4.0, base_width: int = 16, mem_items: int = 20, top_k: int = 2,
                 beta: float = 0.25, lambda_c: float = 0.5, w_int: float = 1.0, w_grad: float = 1.0,
                 w_flow_pred: float = 1.0, w_commit: float = 0.25, w_frame_flow: float = 0.0,
                 w_adv: float = 0.05, patch: int = 16) -> None:
        super().__init__(clip_len=clip_len, channels=channels, height=height, width=width,
                         flow_scale=flow_scale)
        self.beta = beta
        self.w_int, self.w_grad, self.w_flow_pred = w_int, w_grad, w_flow_pred
        self.w_commit, self.w_frame_flow = w_commit, w_frame_flow
        self.patch = patch
        self.default_weights = ((1.0 - lambda_c) / 2, lambda_c, (1.0 - lambda_c) / 2)
        self.adversarial_weight = w_adv
        w = base_width
        self.app_enc = Encoder((clip_len - 1) * channels, w, act="tanh")
        self.mot_enc = Encoder((clip_len - 1) * 2, w, act="tanh")
        d = self.app_enc.out_channels
        self.app_mem = MemPool(d, mem_items, top_k)
        self.mot_mem = MemPool(d, mem_items, top_k)
        self.app_to_mot = transfer_net(d)
        self.mot_to_app = transfer_net(d)
        # Aggregation before each decoder: F(transferred, memory, encoder) for the frame as in the paper;
        # F(transferred, memory) for the flow, whose decoder has no skips either (module docstring).
        self.app_agg = nn.Sequential(nn.Conv2d(3 * d, d, 1), nn.Tanh())
        self.mot_agg = nn.Sequential(nn.Conv2d(2 * d, d, 1), nn.Tanh())
        self.app_dec = Decoder(d, w, channels, skip_channels=self.app_enc.skip_channels, act="tanh")
        self.mot_dec = Decoder(d, w, 2, skip_channels=None, act="tanh", out_act=None)
        # Stage 1 trains without AMFT; stage 2 adds it. Saved with the weights so export knows.
        self.register_buffer("stage", torch.tensor(1, dtype=torch.int64))
        # Flow loss on the predicted frame uses a cheap estimator of our own flow module.
        self.loss_flow = build_flow("tvl1", levels=3, warps=1, iterations=5) if w_frame_flow > 0 else None

    def set_stage(self, stage: int) -> None:
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.stage.fill_(stage)

    def adopt_export(self, weight_names: set[str]) -> set[str]:
        """The stage is traced into the graph, not stored: an export holds the AMFT weights only from stage 2."""
        self.set_stage(2 if any(n.startswith("model.app_to_mot.") for n in weight_names) else 1)
        return {"stage"}

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_inputs(frames, flows)
        v = self.split(frames, flows)
        z_a, skips_a = self.app_enc(v["past"])
        z_m, _ = self.mot_enc(torch.cat([v["past_flows"], v["target_flow"]], 1))
        e_a, e_m = self.app_mem(z_a), self.mot_mem(z_m)
        if int(self.stage) == 2:
            t_a, t_m = self.mot_to_app(e_m), self.app_to_mot(e_a)
        else:
            t_a, t_m = torch.zeros_like(e_a), torch.zeros_like(e_m)
        pred = self.app_dec(self.app_agg(torch.cat([t_a, e_a, z_a], 1)), skips_a)
        pred_flow = self.mot_dec(self.mot_agg(torch.cat([t_m, e_m], 1)))
        return {"prediction": pred, "pred_flow": pred_flow, "z_app": z_a, "e_app": e_a,
                "z_mot": z_m, "e_mot": e_m, "target": v["target"], "target_flow": v["target_flow"],
                "last": v["last"]}

    def losses(self, out: dict[str, torch.Tensor], frames: torch.Tensor,
               flows: torch.Tensor) -> dict[str, torch.Tensor]:
        pred, target = out["prediction"], out["target"]
        terms = {
            **frame_losses(pred, target, self.w_int, self.w_grad),
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
        commit = commit_map(out["z_app"], out["e_app"], mask) + commit_map(out["z_mot"], out["e_mot"], mask)
        frame_err = ((pred - target) ** 2).mean(1, keepdim=True)
        flow_err = ((out["pred_flow"] - out["target_flow"]) ** 2).sum(1, keepdim=True)
        if mask is not None:
            frame_err, flow_err = frame_err * mask, flow_err * mask
        p = min(self.patch, self.height, self.width)
        components = torch.stack([patch_max(frame_err, p), patch_max(commit, COMMIT_PATCH),
                                  patch_max(flow_err, p)], 1)
        return components, frame_err + flow_err, (pred + 1) / 2
