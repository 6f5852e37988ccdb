"""AMSRC-Net (Huang et al., 2022): appearance-motion semantics representation consistency.

A frame stream (appearance: frame t-1 alone) and a flow stream (motion: the flows among frames 1..t-1)
are encoded to ReLU bottleneck features that training pulls together (cosine consistency). Their
flow-guided fusion feeds a U-Net decoder that predicts frame t. At test time, low appearance-motion
consistency and a poor prediction both indicate an anomaly.

The frame stream sees one frame: given several, it can read the motion off them and agree with the flow
stream about any motion, normal or not (measured on Ped2 with four frames: inconsistency AUC 0.58). From
one frame it can only say what motion such an appearance has in normal footage. Departures from the
paper, measured on Ped2 (model card ``models/bundled/ped2-amsrc.md``): a small flow decoder turns the flow
stream's feature into the last past flow (t-2 -> t-1) during training, so that feature must describe the
motion (instead of settling, with the frame stream's, on anything the two can agree on); a small speed
decoder turns the frame stream's feature into the speed that this appearance has in normal footage, and
its error against the real speed is a second, pixel-space measure of appearance-motion inconsistency, one
that keeps the speed (cosine similarity ignores a feature's length) and leaves out the direction (which one
frame cannot tell); with ``speed_against="either"`` it is taken against the nearer of the two flows beside
frame t-1 (:meth:`AMSRCNet.speed_error`), and with ``speed_floor`` / ``flow_sigma`` the flow's noise
floor (what a shaking, noisy or coded picture adds to the flow everywhere) is taken out first. Every score
component is that of the worst 16x16 patch (2x2 bottleneck cells for the cosine), so a small anomaly is not
averaged away. The frame predictor's U-Net skips would let the
appearance go around the frame feature (which then need not describe it before agreeing with the motion
feature: cosine AUC 0.71 with them, 0.87 without), and without skips the prediction is too blurred to
score; so the features learn through a second, skip-less decoder that predicts frame t from the fused
feature alone (training only), and the sharp U-Net predictor that scores learns on detached inputs.

Both signals read from the one frame react to a softer picture (blur, a low bitrate, a stabilised shaking
camera's resampling) as if the scene had changed. Learning blurred copies of the footage as normal fixes
that but blunts the frame error and the cosine on sharp footage (model card, points 9-10). With
``lambda_soft`` > 0 training instead asks only the frame stream to read a blurred copy of its frame as it
reads the frame (same feature direction, same implied speed); the predictor, the flows and the targets stay
sharp. Training only: the exported graph is the same.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .contract import FLOW_SCALE, AnomalyModel, patch_max, shrink_mask
from .flow.tvl1 import central_gradient, gaussian_blur
from .layers import BOTTLENECK_STRIDE, Decoder, Encoder, frame_losses

SOFT_REACH = ("encoder", "bottleneck")  # what the soft view trains: the whole frame encoder, or past its skips
SOFT_MATCH = ("feature", "speed")  # what it matches: the feature's direction and implied speed, or the speed alone
SPEED_AGAINST = ("last", "either")  # the implied speed against flow t-2 -> t-1, or the nearer of it and t-1 -> t
# Below this implied speed (flow_scale units: 0.08 px a frame at the model's size) the appearance says "standing
# still": the measured motion there is the flow's noise floor (``speed_floor``).
STILL_SPEED = 0.02
MAX_FLOOR_STRIDE = 16  # ``floor_stride``: past this, a 128x192 picture leaves too few pixels to read a quantile on
TEXTURE_REACH = 5  # ``speed_texture``: a pixel within 2 px of an edge reads as textured (a walker's outline, inside)


def inconsistency_map(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - cosine similarity along channels: (B, D, h, w) x2 -> (B, 1, h, w), in [0, 1] for ReLU features.

    Written out (not ``F.cosine_similarity``) so it exports to plain ONNX ops."""
    dot = (a * b).sum(1, keepdim=True)
    na = (a * a).sum(1, keepdim=True).add(eps).sqrt()
    nb = (b * b).sum(1, keepdim=True).add(eps).sqrt()
    return 1.0 - dot / (na * nb)


def masked_quantile(x: torch.Tensor, keep: torch.Tensor, q: float) -> torch.Tensor:
    """Per image, the ``q`` quantile (the lower of the two values around it) of ``x`` (B, 1, H, W) >= 0 over
    the pixels ``keep`` holds; 0 where it holds none. (B, 1, 1, 1). A sort and a gather, so it exports to
    ONNX (TopK, GatherElements) with the batch dynamic."""
    b = x.shape[0]
    flat = torch.where(keep, x, torch.full_like(x, -1.0)).reshape(b, -1)
    ordered, _ = torch.sort(flat, dim=1)  # the left-out pixels (-1) first
    count = keep.reshape(b, -1).to(x.dtype).sum(1, keepdim=True)
    index = (flat.shape[1] - count) + torch.floor(q * (count - 1).clamp_min(0.0))
    value = ordered.gather(1, index.clamp(0, flat.shape[1] - 1).long())
    return torch.where(count > 0, value, torch.zeros_like(value)).reshape(b, 1, 1, 1)


def contrast(frame: torch.Tensor, reach: int = TEXTURE_REACH) -> torch.Tensor:
    """Local contrast of a frame (B, C, H, W) in [-1, 1]: the length of its gradient taken as the step across
    two pixels (the flow's central differences, replicated borders; mean over channels), the largest within
    the ``reach``-pixel square around each pixel. (B, 1, H, W)."""
    gx, gy = central_gradient(frame)
    g = (gx * gx + gy * gy).mean(1, keepdim=True).mul(4.0).add(1e-12).sqrt()  # x4: the step across 2 px
    return F.max_pool2d(g, reach, stride=1, padding=reach // 2)


def speed(flow: torch.Tensor) -> torch.Tensor:
    """Length of each flow vector: (B, 2, H, W) -> (B, 1, H, W). Direction is left out on purpose: from one
    frame, which way a pedestrian walks is a guess, how fast is not."""
    return (flow * flow).sum(1, keepdim=True).add(1e-8).sqrt()


class AMSRCNet(AnomalyModel):
    """Two-stream encoder + consistency loss + flow-guided fusion + frame-prediction decoder.

    forward outputs: ``pred`` (B, C, H, W) in [-1, 1] and ``target``, frame t as it is judged (band-limited
    with ``appearance_sigma``, so the blur runs once per pass); ``fea_frame``, ``fea_flow`` (B, 4w, H/8, W/8);
    ``inconsistency`` (B, 1, H/8, W/8) = 1 - cos per bottleneck location; ``app_speed`` (B, 1, H, W) the
    speed (length of flow t-2 -> t-1) decoded from the frame stream's feature: the speed the appearance
    implies; in training mode also ``flow_rec``, flow t-2 -> t-1 decoded from the flow stream's feature,
    and ``pred_features``, frame t decoded from the fused feature alone.
    """

    method = "amsrc"
    component_names = ("inconsistency_patch", "frame_patch", "speed_patch")
    default_weights = (1 / 3, 1 / 3, 1 / 3)
    score_args = ("speed_against", "speed_floor", "flow_sigma", "floor_stride", "speed_texture")

    def __init__(self, *, clip_len: int, channels: int, height: int, width: int,
                 flow_scale: float = FLOW_SCALE, base_width: int = 16, lambda_int: float = 1.0,
                 lambda_grad: float = 1.0, lambda_sim: float = 1.0, lambda_flow: float = 1.0,
                 patch: int = 16, lambda_soft: float = 0.0,
                 soft_sigma: tuple[float, float] = (0.5, 1.6), soft_reach: str = "encoder",
                 soft_match: str = "feature", appearance_sigma: float = 0.0, speed_against: str = "last",
                 speed_floor: float = 0.0, flow_sigma: float = 0.0, floor_stride: int = 1,
                 speed_texture: float = 0.0) -> None:
        super().__init__(clip_len=clip_len, channels=channels, height=height, width=width,
                         flow_scale=flow_scale)
        self.base_width = base_width
        self.lambda_int = lambda_int
        self.lambda_grad = lambda_grad
        self.lambda_sim = lambda_sim
        self.lambda_flow = lambda_flow
        self.patch = patch
        if (lambda_soft < 0 or not 0 < soft_sigma[0] <= soft_sigma[1] or soft_reach not in SOFT_REACH
                or soft_match not in SOFT_MATCH):
            raise ValueError(f"lambda_soft must be >= 0, soft_sigma a range 0 < lo <= hi, soft_reach one of "
                             f"{SOFT_REACH} and soft_match one of {SOFT_MATCH}, got {lambda_soft}, {soft_sigma}, "
                             f"{soft_reach!r}, {soft_match!r}")
        if appearance_sigma < 0:
            raise ValueError(f"appearance_sigma must be >= 0, got {appearance_sigma}")
        if speed_against not in SPEED_AGAINST:
            raise ValueError(f"speed_against must be one of {SPEED_AGAINST}, got {speed_against!r}")
        if not 0 <= speed_floor < 1 or flow_sigma < 0:
            raise ValueError(f"speed_floor must be a quantile in [0, 1) and flow_sigma >= 0, got {speed_floor}, "
                             f"{flow_sigma}")
        if not (isinstance(floor_stride, int) and 1 <= floor_stride <= MAX_FLOOR_STRIDE):
            raise ValueError(f"floor_stride must be an integer in [1, {MAX_FLOOR_STRIDE}], got {floor_stride!r}")
        if speed_texture < 0:
            raise ValueError(f"speed_texture must be >= 0, got {speed_texture}")
        self.speed_against = speed_against
        self.speed_texture = float(speed_texture)
        self.floor_stride = floor_stride
        self.speed_floor = float(speed_floor)
        self.flow_sigma = float(flow_sigma)
        self.appearance_sigma = float(appearance_sigma)
        self.lambda_soft = lambda_soft
        self.soft_sigma = (float(soft_sigma[0]), float(soft_sigma[1]))
        self.soft_reach = soft_reach
        self.soft_match = soft_match
        w = base_width
        self.frame_encoder = Encoder(channels, w, act="relu")
        self.flow_encoder = Encoder((clip_len - 2) * 2, w, act="relu")
        self.flow_decoder = Decoder(self.flow_encoder.out_channels, w, 2, skip_channels=None, act="relu",
                                    out_act=None)
        self.speed_decoder = Decoder(self.frame_encoder.out_channels, w, 1, skip_channels=None, act="relu",
                                     out_act=None)
        self.feature_decoder = Decoder(self.frame_encoder.out_channels, w, channels, skip_channels=None,
                                       act="relu", out_act="tanh")
        self.decoder = Decoder(self.frame_encoder.out_channels, w, channels,
                               skip_channels=self.frame_encoder.skip_channels, act="relu",
                               out_act="tanh")

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_inputs(frames, flows)
        v = self.views(frames, flows)
        fea_frame, fea_flow, fused, skips = self.encode(v)
        # The scoring predictor only renders: its loss does not reach the encoders (see the module docstring).
        pred = self.decoder(fused.detach(), [s.detach() for s in skips])
        out = {"pred": pred, "target": v["target"], "fea_frame": fea_frame, "fea_flow": fea_flow,
               "inconsistency": inconsistency_map(fea_frame, fea_flow), "app_speed": self.speed_decoder(fea_frame)}
        if self.training:
            out["flow_rec"] = self.flow_decoder(fea_flow)
            out["pred_features"] = self.feature_decoder(fused)
            if self.lambda_soft > 0:
                out.update(self.soft_view(v["last"]))
        return out

    def views(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`split`, with the frame stream's input and the predicted frame band-limited by a fixed
        Gaussian of ``appearance_sigma`` model pixels when it is > 0: a camera's softer picture (blur, a
        low bitrate, a stabilised shake's resampling) takes detail the model then never relied on. The
        flows stay as measured. Part of the graph, so training, export and serving compute the same. Not in
        a recipe: on Ped2 it moved the seed spread from the frame error to the speed error and left blur
        and compression flagged (model card, point 20)."""
        v = self.split(frames, flows)
        if self.appearance_sigma > 0:
            v["last"] = gaussian_blur(v["last"], self.appearance_sigma)
            v["target"] = gaussian_blur(v["target"], self.appearance_sigma)
        return v

    def encode(self, v: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(frame feature, flow feature, their flow-guided fusion, the frame encoder's skips) of a split clip."""
        fea_frame, skips = self.frame_encoder(v["last"])
        fea_flow, _ = self.flow_encoder(v["past_flows"])
        # Flow-guided fusion: motion features gated by the appearance features.
        return fea_frame, fea_flow, fea_frame + torch.sigmoid(fea_frame) * fea_flow, skips

    def predictor(self) -> torch.nn.Module:
        """The U-Net whose frame error scores. It trains on detached features that the other objectives
        shape, and on some seeds it is still learning when they end: its frame error's AUC on Ped2 ranged
        from 0.75 to 0.87 between seeds, and 4 more epochs on its own raised the three weakest (0.75-0.78)
        to 0.79-0.87 and left the strong ones where they were (model card, point 16)."""
        return self.decoder

    def predictor_losses(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        v = self.views(frames, flows)
        with torch.no_grad():
            _, _, fused, skips = self.encode(v)
        return frame_losses(self.decoder(fused, skips), v["target"], self.lambda_int, self.lambda_grad)

    def soft_view(self, last: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frame stream's feature and implied speed of frame t-1 blurred by a σ drawn from
        ``soft_sigma`` (model pixels; Ped2's σ 3 at 360x240 is about 1.6 here), one σ per batch. With
        ``soft_reach="bottleneck"`` only the layers after the last skip learn from it: the stages whose
        outputs are the predictor's skips keep their sharp detail (the whole encoder learning it blunted
        the frame error, model card point 12). With ``soft_match="speed"`` only the implied speed is matched
        and the feature's direction, which the cosine component reads, is left to the sharp frame (the cosine
        still lost its strength on one seed of three, model card point 14)."""
        lo, hi = self.soft_sigma
        sigma = lo + (hi - lo) * float(torch.rand(()))
        soft = gaussian_blur(last, sigma)
        if self.soft_reach == "encoder":
            fea, _ = self.frame_encoder(soft)
        else:
            with torch.no_grad():
                _, skips = self.frame_encoder(soft)
            fea = self.frame_encoder.bottleneck_of(skips[-1])
        return {"fea_soft": fea, "app_speed_soft": self.speed_decoder(fea)}

    def speed_error(self, app_speed: torch.Tensor, v: dict[str, torch.Tensor],
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """Squared error of the speed frame t-1's appearance implies, (B, 1, H, W). ``speed_against="last"``:
        against flow t-2 -> t-1, the flow it was trained on; ``"either"``: against the nearer of that and flow
        t-1 -> t. Frame t-1 lies between the two: the first flow is defined on frame t-2's grid, off a moving
        object's place in t-1 by its own motion, and each carries its own estimation error, so a pixel
        counts only where the appearance disagrees with the motion on both sides of its frame (a speed
        anomaly does, with both). Each measured speed is :meth:`measured_speed`. ``speed_texture`` > 0 weighs
        each pixel's error by c^2 / (c^2 + speed_texture^2), c the :func:`contrast` of frame t-1 there: a
        flow is measured only where the picture has detail and filled in elsewhere from around it, so on a
        flat part (pavement between walkers) a codec's moving blocks spread into smooth false motion, while a
        moving object brings its own edges (model card, point 28). Score only: training is the same."""
        err = (app_speed - self.measured_speed(v["last_flow"], app_speed, mask)) ** 2
        if self.speed_against == "either":
            err = torch.minimum(err, (app_speed - self.measured_speed(v["target_flow"], app_speed, mask)) ** 2)
        if self.speed_texture > 0:
            c2 = contrast(v["last"]) ** 2
            err = err * c2 / (c2 + self.speed_texture ** 2)
        return err

    def measured_speed(self, flow: torch.Tensor, app_speed: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """The flow's speed as the score compares it. ``flow_sigma`` > 0 first smooths the flow's vectors
        (model pixels): noise in them cancels, a moving object's coherent motion does not. ``speed_floor``
        > 0 takes out the flow's noise floor in quadrature: that quantile of the speed measured where the
        appearance implies standing still (:data:`STILL_SPEED`; unmasked pixels), per frame, read on every
        ``floor_stride``-th pixel of each row and column (at 4 a sixteenth of the sort, the floor's main
        cost; the shipped model's AUC the same to the third decimal, model card point 24). A shaking,
        noisy or coded picture raises the flow everywhere, and the appearance cannot know it: on the
        shipped model most of the speed error those changes add comes from the flow's side, not the
        appearance's (model card, point 23)."""
        if self.flow_sigma > 0:
            flow = gaussian_blur(flow, self.flow_sigma)
        s = speed(flow)
        if self.speed_floor > 0:
            still = app_speed < STILL_SPEED
            if mask is not None:
                still = still & (mask >= 0.5)
            k = self.floor_stride
            floor = masked_quantile(s[..., ::k, ::k], still[..., ::k, ::k], self.speed_floor)
            s = (s * s - floor * floor).clamp_min(0.0).add(1e-8).sqrt()
        return s

    def losses(self, out: dict[str, torch.Tensor], frames: torch.Tensor,
               flows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``flow`` (motion feature -> flow) and ``feature_*`` (fused feature -> frame t) terms exist only
        for a training-mode ``out``; ``intensity`` and ``gradient`` train the scoring predictor alone."""
        pred, target, last_flow = out["pred"], out["target"], self.split(frames, flows)["last_flow"]
        terms = {
            **frame_losses(pred, target, self.lambda_int, self.lambda_grad),
            "consistency": self.lambda_sim * out["inconsistency"].mean(),
            "app_speed": self.lambda_flow * (out["app_speed"] - speed(last_flow)).abs().mean(),
        }
        if "flow_rec" in out:
            terms["flow"] = self.lambda_flow * (out["flow_rec"] - last_flow).abs().mean()
        if "pred_features" in out:
            terms.update(frame_losses(out["pred_features"], target, self.lambda_int, self.lambda_grad, "feature_"))
        if "fea_soft" in out:  # the blurred frame read as the sharp one is; the sharp reading is not moved
            soft = (out["app_speed_soft"] - out["app_speed"].detach()).abs().mean()
            if self.soft_match == "feature":
                soft = soft + inconsistency_map(out["fea_soft"], out["fea_frame"].detach()).mean()
            terms["soft"] = self.lambda_soft * soft
        return terms

    def score(self, frames: torch.Tensor, flows: torch.Tensor, mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """components (B, 3) = (mean 1-cos of the worst 2x2 bottleneck cells, each weighted by the share
        of its pixels the mask keeps; squared frame error of the worst 16x16 patch; squared error of the
        appearance-implied speed of the worst 16x16 patch), over unmasked pixels; heatmap = frame error
        (mean over channels, [-1, 1] units) + appearance-implied speed error (flow / flow_scale units) +
        bilinearly upsampled 1-cos map, zero where masked; prediction in [0, 1]."""
        self.check_mask(frames, mask)
        out = self.forward(frames, flows)
        inc = out["inconsistency"]
        err = ((out["pred"] - out["target"]) ** 2).mean(1, keepdim=True)
        motion = self.speed_error(out["app_speed"], self.split(frames, flows), mask)
        inc_up = F.interpolate(inc, size=(self.height, self.width), mode="bilinear", align_corners=False)
        heatmap = err + motion + inc_up.clamp_min(0.0)
        if mask is not None:
            inc = inc * shrink_mask(mask, BOTTLENECK_STRIDE)
            err, motion, heatmap = err * mask, motion * mask, heatmap * mask
        p = min(self.patch, self.height, self.width)
        components = torch.stack([patch_max(inc, 2), patch_max(err, p), patch_max(motion, p)], 1)
        prediction = ((out["pred"] + 1.0) * 0.5).clamp(0.0, 1.0)
        return components, heatmap, prediction
