"""Masks: polygons in 0-1 frame coordinates (what a user draws) -> the model's mask input.

A polygon covers what must never alarm (an on-screen clock, a road, a tree): inside it the mask is 0,
elsewhere 1, at the model's input size. Polygons hold at least 3 points; x is across, y down, both in [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

Polygon = list[tuple[float, float]]


def check_polygons(polygons: list[Polygon]) -> list[Polygon]:
    """The polygons, or ValueError naming the first bad one."""
    for i, poly in enumerate(polygons):
        if len(poly) < 3:
            raise ValueError(f"mask {i}: a polygon needs at least 3 points, got {len(poly)}")
        for x, y in poly:
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"mask {i}: point ({x}, {y}) is outside the frame; coordinates are 0-1")
    return polygons


def mask_image(polygons: list[Polygon], height: int, width: int) -> np.ndarray | None:
    """(1, height, width) float32, 0 inside any polygon and 1 elsewhere; None when there are none."""
    if not polygons:
        return None
    covered = np.zeros((height, width), np.uint8)
    for poly in polygons:
        points = np.round(np.array(poly, np.float64) * [width - 1, height - 1]).astype(np.int32)
        cv2.fillPoly(covered, [points], 1)
    return (1.0 - covered.astype(np.float32))[None]
