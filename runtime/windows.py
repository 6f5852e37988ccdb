"""Clip windows: which frames a model call sees, and which frame its score belongs to.

A window of ``clip_len`` consecutive frames (and the ``clip_len - 1`` flows between them) scores its
*last* frame, so in a clip of N frames the frames ``clip_len - 1 .. N - 1`` get a score and the first
``clip_len - 1`` only serve as history. Training cuts its windows here; the inference engine keeps the
same window incrementally per stream (runtime/engine.py) and tags every result with its frame id.
"""

from __future__ import annotations

import numpy as np


def scored_frames(n_frames: int, clip_len: int, stride: int = 1, *, name: str = "clip") -> range:
    """Ids of the frames of an ``n_frames`` clip that have a full window, every ``stride``-th one."""
    if n_frames < clip_len:
        raise ValueError(f"{name} has {n_frames} frames, fewer than the clip length {clip_len}")
    return range(clip_len - 1, n_frames, stride)


def window(frames: np.ndarray, flows: np.ndarray, frame_id: int, clip_len: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """The inputs that score ``frame_id``: frames ``frame_id - clip_len + 1 .. frame_id`` (T, C, H, W)
    and the flows between them (T - 1, 2, H, W); ``flows[i]`` is the flow from frame i to i + 1."""
    first = frame_id - clip_len + 1
    if first < 0 or frame_id >= len(frames):
        raise ValueError(f"frame {frame_id} has no full window of {clip_len} frames in a clip of {len(frames)}")
    return frames[first:frame_id + 1], flows[first:frame_id]
