"""Building blocks shared by the three methods: U-Net-like encoders and decoders with 3 scales."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
BOTTLENECK_STRIDE = 8  # an Encoder's bottleneck is 8 times smaller than its input (3 poolings)


def conv_block(cin: int, cout: int, act: str) -> nn.Sequential:
    """Two 3x3 conv + batch-norm + activation layers at constant resolution."""
    a = ACTIVATIONS[act]
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), a(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), a(),
    )


class Encoder(nn.Module):
    """Three conv stages (H, H/2, H/4) and a bottleneck at H/8 with ``4 * width`` channels.

    Returns the bottleneck feature and the three skip features (fine to coarse). ``act`` is applied
    after every conv, the bottleneck included (Tanh for AMMC-Net, ReLU for AMSRC-Net).
    """

    def __init__(self, cin: int, width: int, act: str = "relu") -> None:
        super().__init__()
        w = width
        self.stages = nn.ModuleList([conv_block(cin, w, act), conv_block(w, 2 * w, act),
                                     conv_block(2 * w, 4 * w, act)])
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(4 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), ACTIVATIONS[act](),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1))
        self.out_act = ACTIVATIONS[act]()
        self.out_channels = 4 * w
        self.skip_channels = (w, 2 * w, 4 * w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        return self.bottleneck_of(x), skips

    def bottleneck_of(self, coarsest_skip: torch.Tensor) -> torch.Tensor:
        """The bottleneck feature from the coarsest skip feature: the layers after the last skip."""
        return self.out_act(self.bottleneck(self.pool(coarsest_skip)))


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`: upsample H/8 -> H, optionally concatenating skips, then a 3x3
    output conv. ``out_act`` is ``"tanh"`` for frames in [-1, 1] and ``None`` for flow."""

    def __init__(self, cin: int, width: int, cout: int, *, skip_channels: tuple[int, ...] | None,
                 act: str = "relu", out_act: str | None = "tanh") -> None:
        super().__init__()
        w = width
        chans = (4 * w, 2 * w, w)
        skips = tuple(reversed(skip_channels)) if skip_channels else (0, 0, 0)
        self.use_skips = skip_channels is not None
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        prev = cin
        for c, s in zip(chans, skips):
            self.ups.append(nn.ConvTranspose2d(prev, c, 2, stride=2))
            self.blocks.append(conv_block(c + s, c, act))
            prev = c
        self.head = nn.Conv2d(w, cout, 3, padding=1)
        self.out_act = nn.Tanh() if out_act == "tanh" else nn.Identity()

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        for i, (up, block) in enumerate(zip(self.ups, self.blocks)):
            x = up(x)
            if self.use_skips:
                x = torch.cat([x, skips[-1 - i]], 1)
            x = block(x)
        return self.out_act(self.head(x))


def frame_losses(pred: torch.Tensor, target: torch.Tensor, w_int: float, w_grad: float,
                 prefix: str = "") -> dict[str, torch.Tensor]:
    """The frame-prediction terms every method trains with: weighted MSE (``intensity``) and
    gradient-difference (``gradient``) losses, their names prefixed by ``prefix``."""
    return {f"{prefix}intensity": w_int * ((pred - target) ** 2).mean(),
            f"{prefix}gradient": w_grad * gradient_loss(pred, target)}


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient-difference loss (Mathieu et al.): L1 between absolute image gradients."""
    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x[..., :, 1:] - x[..., :, :-1]).abs(), (x[..., 1:, :] - x[..., :-1, :]).abs()
    (px, py), (tx, ty) = grads(pred), grads(target)
    return (px - tx).abs().mean() + (py - ty).abs().mean()
