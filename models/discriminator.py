"""Patch discriminator for the LSGAN adversarial loss (training only; never exported)."""

from __future__ import annotations

from torch import nn


class PatchDiscriminator(nn.Module):
    """Maps a frame in [-1, 1] to a grid of real/fake logits, one per receptive-field patch."""

    def __init__(self, *, channels: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 1, 3, 1, 1))

    def forward(self, x):
        return self.net(x)
