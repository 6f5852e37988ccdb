"""Frame preprocessing shared by training and serving, so both feed the model identical inputs."""

from __future__ import annotations

import cv2
import numpy as np


def to_model_frame(image: np.ndarray, *, height: int, width: int, channels: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) or gray (H, W) image -> float32 (channels, height, width) in [0, 1].

    Resizes with area interpolation; ``channels=1`` uses ITU-R BT.601 luminance.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected a uint8 image of shape (H, W) or (H, W, 3), "
                         f"got {image.dtype} {image.shape}")
    if image.ndim == 3 and channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif image.ndim == 2 and channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    out = image.astype(np.float32) / 255.0
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
