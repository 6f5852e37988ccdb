"""Tiny synthetic clips of moving shapes (Ped2 frame-folder layout or H.264 MP4), tiny configs, and where
the real Ped2 lives."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

PED2 = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ped2"
SIZE = (72, 96)  # frames on disk (H, W); tests resize them to 32x48


def ped2_or_skip() -> Path:
    if not (PED2 / "testing" / "frames").is_dir():
        pytest.skip(f"UCSD Ped2 not found at {PED2} (only present on developer machines and CI)")
    return PED2


def render_clip(n: int, *, speed: float, seed: int, fast_from: int | None = None) -> list[np.ndarray]:
    """Grey frames with textured background and two walking squares; from ``fast_from`` on a bright
    square crosses quickly (the anomaly)."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    background = cv2.GaussianBlur(rng.uniform(60, 140, (h, w)).astype(np.float32), (0, 0), 2)
    starts = rng.uniform(5, 40, size=(2, 2))
    frames = []
    for i in range(n):
        img = background.copy()
        for k, (y, x) in enumerate(starts):
            yy, xx = int(y + 10 * k), int(x + speed * i) % (w - 8)
            img[yy:yy + 8, xx:xx + 6] = 200
        if fast_from is not None and i >= fast_from:
            x = int(6 * (i - fast_from)) % (w - 12)
            img[40:52, x:x + 12] = 250
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def write_clip(folder: Path, frames: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """Grey uint8 frames -> H.264 MP4 (yuv420p) with PyAV."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(f, cv2.COLOR_GRAY2RGB), format="rgb24")
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    return path


TINY_FLOW = {"name": "tvl1", "levels": 2, "warps": 1, "iterations": 5}


def tiny_config(root: Path, out: Path, method: str, **optim) -> dict:
    """A config dict for a seconds-long training run on the synthetic dataset."""
    return {
        "seed": 0, "out_dir": str(out), "flow": TINY_FLOW,
        "data": {"root": str(root), "flow_cache": str(out / "flows")},
        "model": {"method": method, "args": {"clip_len": 4, "channels": 1, "height": 32, "width": 48,
                                             "base_width": 4}},
        "optim": {"epochs": 1, "batch_size": 4, **optim},
        "score": {"smoothing": 2},
    }
