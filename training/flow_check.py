"""Accuracy and speed check of the flow estimators on synthetic motion over real Ped2 frames.

For each sampled test frame a smooth random flow field (random affine motion plus a low-frequency random
field, at most ``MAX_MAGNITUDE`` px) is drawn, and the pair is built so that the ground truth is exact in
OpenCV's convention ``prev(y, x) = nxt(y + v, x + u)``: the real frame is ``nxt`` and ``prev`` is obtained by
sampling it at ``(x + u, y + v)`` (a backward warp with ``cv2.remap``). Forward-warping the frame instead
would need splatting and the flow would then be defined on the wrong grid.

End-point error is averaged over pixels at least ``MARGIN`` px from the border. Timings are per pair
(batch of one), median over the pairs, with 2 CPU threads for torch and OpenCV.

Usage: ``amvad flow-check --data DATASET_ROOT --json out.json`` (Ped2 frame-folder layout).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from amvad.models.flow import build_flow
from amvad.runtime.backends import available

MAX_MAGNITUDE = 4.0  # px, largest ground-truth displacement
MARGIN = 16  # px excluded at each border when computing EPE
CPU_THREADS = 2


def _list_frames(data_root: Path) -> list[Path]:
    frames_dir = data_root / "testing" / "frames"
    if not frames_dir.is_dir():
        raise FileNotFoundError(f"Ped2 test frames not found: {frames_dir} (expected <data_root>/testing/frames/<clip>/*.jpg)")
    files = sorted(frames_dir.glob("*/*.jpg"))
    if not files:
        raise FileNotFoundError(f"no *.jpg frames under {frames_dir}/<clip>/")
    return files


def _load_gray(path: Path, size: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(f"cannot read frame {path}")
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def random_flow(rng: np.random.Generator, size: int, max_magnitude: float = MAX_MAGNITUDE) -> np.ndarray:
    """Smooth random flow (size, size, 2) float32: affine motion plus a low-frequency field."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xn = (xx - (size - 1) / 2) / size  # [-0.5, 0.5]
    yn = (yy - (size - 1) / 2) / size
    t = rng.uniform(-2.0, 2.0, size=2)
    m = rng.uniform(-3.0, 3.0, size=(2, 2))  # px of extra motion across the whole frame
    coarse = rng.normal(0.0, 1.0, size=(4, 4, 2)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    u = t[0] + m[0, 0] * xn + m[0, 1] * yn + field[..., 0]
    v = t[1] + m[1, 0] * xn + m[1, 1] * yn + field[..., 1]
    flow = np.stack([u, v], axis=-1).astype(np.float32)
    peak = float(np.sqrt((flow ** 2).sum(-1)).max())
    if peak > max_magnitude:
        flow *= max_magnitude / peak
    return flow


def make_pair(frame: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prev, nxt) uint8 such that prev(y, x) = nxt(y + v, x + u) exactly, with nxt = frame."""
    h, w = frame.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    prev = cv2.remap(frame.astype(np.float32), xx + flow[..., 0], yy + flow[..., 1],
                     interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
    return np.clip(np.rint(prev), 0, 255).astype(np.uint8), frame


def epe(pred: np.ndarray, gt: np.ndarray, margin: int = MARGIN) -> float:
    """Mean end-point error over the interior; both (H, W, 2)."""
    d = (pred - gt)[margin:-margin or None, margin:-margin or None]
    return float(np.sqrt((d ** 2).sum(-1)).mean())


def _to_tensor(img: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32) / 255.0)[None, None].to(device)


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(fn(*args), wall-clock milliseconds)."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0) * 1e3


def _run_synchronized(est: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = est(a, b)
    torch.cuda.synchronize()
    return out


def _device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def run_flow_check(data_root: str | Path, *, size: int = 256, pairs: int = 20, seed: int = 0,
                   progress: bool = True) -> dict[str, Any]:
    """Compare default TV-L1 (PyTorch, and as a graph on OpenVINO when installed: the flow the service runs
    there), DIS (medium) and OpenCV DualTVL1 on synthetic pairs made from Ped2 frames."""
    data_root = Path(data_root)
    files = _list_frames(data_root)
    if pairs < 1 or size < 2 * MARGIN + 8:
        raise ValueError(f"need pairs >= 1 and size >= {2 * MARGIN + 8}, got pairs={pairs}, size={size}")
    rng = np.random.default_rng(seed)
    chosen = [files[i] for i in sorted(rng.choice(len(files), size=min(pairs, len(files)), replace=False))]

    tvl1 = build_flow("default")
    dis = build_flow("dis", preset="medium")
    dual = cv2.optflow.DualTVL1OpticalFlow_create()
    use_cuda = torch.cuda.is_available()
    graph = None
    if available("openvino"):
        from amvad.runtime.backends import default_cache_dir
        from amvad.runtime.backends.ov import OpenVinoFlow
        graph = OpenVinoFlow(tvl1, (1, size, size), threads=CPU_THREADS, cache_dir=default_cache_dir())

    methods = (["tvl1", "dis", "dualtvl1"] + (["tvl1_openvino"] if graph else [])
               + (["tvl1_cuda"] if use_cuda else []))
    errors: dict[str, list[float]] = {m: [] for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    zero_errors: list[float] = []

    old_torch_threads, old_cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(CPU_THREADS)
    cv2.setNumThreads(CPU_THREADS)
    try:
        iterator: Any = chosen
        if progress:
            from tqdm import tqdm
            iterator = tqdm(chosen, desc="flow check", unit="pair", file=sys.stderr)
        warm = False
        for path in iterator:
            frame = _load_gray(path, size)
            gt = random_flow(rng, size)
            prev, nxt = make_pair(frame, gt)
            zero_errors.append(epe(np.zeros_like(gt), gt))
            a, b = _to_tensor(prev), _to_tensor(nxt)
            if not warm:  # first-call overheads (allocator, kernels) are not part of the per-pair cost
                tvl1(a, b)
                dis(a, b)
                if graph:
                    graph(a, b)
                if use_cuda:
                    tvl1(a.cuda(), b.cuda())
                    torch.cuda.synchronize()
                warm = True

            with torch.no_grad():
                results = {
                    "tvl1": _timed(lambda x, y: tvl1(x, y)[0].permute(1, 2, 0).numpy(), a, b),
                    "dis": _timed(lambda x, y: dis(x, y)[0].permute(1, 2, 0).numpy(), a, b),
                    "dualtvl1": _timed(lambda x, y: dual.calc(x, y, None), prev, nxt),
                }
                if graph:
                    results["tvl1_openvino"] = _timed(lambda x, y: graph(x, y)[0].permute(1, 2, 0).numpy(), a, b)
                if use_cuda:
                    ac, bc = a.cuda(), b.cuda()
                    torch.cuda.synchronize()
                    out_c, ms_c = _timed(_run_synchronized, tvl1, ac, bc)
                    results["tvl1_cuda"] = (out_c[0].permute(1, 2, 0).cpu().numpy(), ms_c)
            for m, (flow, ms) in results.items():
                errors[m].append(epe(np.asarray(flow, dtype=np.float32), gt))
                times[m].append(ms)
    finally:
        torch.set_num_threads(old_torch_threads)
        cv2.setNumThreads(old_cv_threads)

    table = {m: {"epe": float(np.mean(errors[m])), "ms_per_pair": float(np.median(times[m]))} for m in methods}
    return {
        "size": size,
        "pairs": len(chosen),
        "seed": seed,
        "margin": MARGIN,
        "max_magnitude": MAX_MAGNITUDE,
        "zero_flow_epe": float(np.mean(zero_errors)),
        "tvl1_spec": tvl1.spec,
        "methods": table,
        "ratio_default_to_dualtvl1": table["tvl1"]["epe"] / table["dualtvl1"]["epe"],
        "threads": CPU_THREADS,
        "device": _device_name(),
        # Timings are wall-clock: on a shared machine, check the load before trusting them.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
