"""A colour camera by day and at night. By day: a textured colour view (painted walls, grass, cars: mean
chroma about 0.08) with people-like squares walking across it, entering at one side and leaving at the
other (no cut, no turn: the footage loops as a street does). At night: the same view as a camera's
infrared mode shows it, grey and with another tone curve: materials reflect infrared otherwise than
light (foliage and fabrics turn bright: a red-heavy channel mix instead of luminance), the IR lamp lifts
the shadows (floor 30) and flattens the picture (gamma 0.6, contrast x0.8)."""

from __future__ import annotations

import cv2
import numpy as np

SIZE = (96, 144)  # (H, W), as ``scenes.SCENE_SIZE``
WALKERS = ((24, 1.5, 225), (54, -1.2, 60), (72, 0.9, 200))  # (row, px per frame, grey level)


def background(seed: int = 3) -> np.ndarray:
    """A still colour view (H, W, 3) float32: smooth texture, each region its own colour."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    grey = cv2.GaussianBlur(rng.uniform(0, 255, (h // 6, w // 6)).astype(np.float32), (0, 0), 0.8)
    grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_CUBIC)
    grey = 40 + 170 * (grey - grey.min()) / np.ptp(grey)
    tint = cv2.resize(rng.uniform(0.7, 1.3, (h // 24 + 2, w // 24 + 2, 3)).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    return grey[..., None] * tint


def day(n: int, *, seed: int = 3, start: int = 0) -> list[np.ndarray]:
    """Frames ``start`` .. ``start + n - 1`` (RGB uint8) of the colour view with its walkers."""
    bg = background(seed)
    w = SIZE[1]
    frames = []
    for i in range(start, start + n):
        img = bg.copy()
        for k, (row, speed, level) in enumerate(WALKERS):
            span = w + 24  # a walker leaves the picture, then the next one enters
            x = int((10 + 40 * k + speed * i) % span) - 12
            lo, hi = max(x, 0), min(x + 8, w)
            if lo < hi:
                img[row:row + 12, lo:hi] = (level, level * 0.8, level * 0.6)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def infrared(frame: np.ndarray) -> np.ndarray:
    """One RGB frame as the camera's infrared mode shows it (still RGB, every channel the same)."""
    f = frame.astype(np.float32) / 255
    ir = 30 + 0.8 * 255 * np.clip(0.7 * f[..., 0] + 0.3 * f[..., 1], 0, 1) ** 0.6
    return np.repeat(np.clip(ir, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def night(n: int, *, seed: int = 3, start: int = 0) -> list[np.ndarray]:
    """The same frames in infrared."""
    return [infrared(f) for f in day(n, seed=seed, start=start)]
