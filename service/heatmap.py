"""Heatmap overlay: the model's per-pixel error, smoothed, upsampled to the frame, colour-mapped and
blended over the frame, as JPEG bytes."""

from __future__ import annotations

import cv2
import numpy as np

MAX_WIDTH = 640


def overlay_jpeg(frame_rgb: np.ndarray, heatmap: np.ndarray, vmax: float, *, alpha: float = 0.45,
                 quality: int = 80) -> bytes:
    """frame_rgb: uint8 (H, W, 3); heatmap: float (h, w) >= 0 at model resolution; ``vmax`` maps to
    the hottest colour (a fixed scale, so normal frames stay cool). Frames wider than 640 px shrink."""
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or heatmap.ndim != 2:
        raise ValueError(f"expected (H, W, 3) frame and (h, w) heatmap, got {frame_rgb.shape}, {heatmap.shape}")
    h, w = frame_rgb.shape[:2]
    if w > MAX_WIDTH:
        h, w = round(h * MAX_WIDTH / w), MAX_WIDTH
        frame_rgb = cv2.resize(frame_rgb, (w, h), interpolation=cv2.INTER_AREA)
    sigma = max(1.0, heatmap.shape[1] / 64)
    smooth = cv2.GaussianBlur(heatmap.astype(np.float32), (0, 0), sigma)
    up = cv2.resize(smooth, (w, h), interpolation=cv2.INTER_LINEAR)
    level = np.clip(up / max(vmax, 1e-12), 0.0, 1.0)
    colour = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    weight = (alpha * level)[..., None]
    bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR).astype(np.float32)
    out = (bgr * (1 - weight) + colour.astype(np.float32) * weight).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class HeatScale:
    """The colour scale of one stream's overlays (display state, kept by whoever draws them): three times
    the typical heatmap peak on frames judged normal, so normal frames stay cool and anomalies glow."""

    def __init__(self) -> None:
        self.typical_peak = 0.0

    def update(self, heatmap: np.ndarray, anomaly: bool) -> None:
        """Follow the 99th-percentile peak of normal frames (exponential average)."""
        if anomaly:
            return
        peak = float(np.percentile(heatmap, 99))
        self.typical_peak = peak if self.typical_peak == 0 else 0.98 * self.typical_peak + 0.02 * peak

    def vmax(self, heatmap: np.ndarray) -> float:
        """The value drawn hottest: the scale above, or this frame's own peak before any normal frame."""
        return 3.0 * self.typical_peak if self.typical_peak > 0 else float(heatmap.max()) or 1.0

    def overlay(self, frame_rgb: np.ndarray, heatmap: np.ndarray) -> bytes:
        return overlay_jpeg(frame_rgb, heatmap, self.vmax(heatmap))
