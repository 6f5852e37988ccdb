"""Heatmap overlays and their colour scale (display state kept by cameras and clip jobs)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from amvad.service.heatmap import HeatScale, overlay_jpeg


def test_overlay_is_a_jpeg_of_the_frame_size():
    frame = np.full((72, 96, 3), 120, np.uint8)
    heat = np.zeros((32, 48), np.float32)
    heat[10:20, 20:30] = 1.0
    img = cv2.imdecode(np.frombuffer(overlay_jpeg(frame, heat, vmax=1.0), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (72, 96, 3)
    # the hot region is coloured (red-ish in BGR), the cold region keeps the grey frame
    assert img[34, 50, 2] > img[34, 50, 0] + 40 and abs(int(img[5, 5, 0]) - 120) < 25
    with pytest.raises(ValueError, match="expected"):
        overlay_jpeg(frame[..., 0], heat, vmax=1.0)


def test_scale_follows_normal_frames_only():
    scale, heat = HeatScale(), np.full((8, 8), 2.0, np.float32)
    # before any normal frame the frame's own peak is the hottest colour
    assert scale.vmax(heat) == pytest.approx(2.0)
    scale.update(heat, anomaly=False)
    assert scale.vmax(heat) == pytest.approx(6.0)
    # an anomalous frame does not move the scale, so it stays hot against it
    scale.update(heat * 100, anomaly=True)
    assert scale.vmax(heat) == pytest.approx(6.0)
