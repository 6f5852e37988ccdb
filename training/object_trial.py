"""The object-centric trial of AMSRC-Net (issue #12, item 2): score motion regions instead of whole frames.

AMSRC-Net's paper scores objects from a detector; we have no pretrained detector, so an object here is a
connected component of the flow magnitude (the largest magnitude over the window's flows, above a
threshold, closed with a 5x5 kernel, at least ``min_area`` pixels). Its box, widened by ``margin`` and made
square (at least ``min_side``, at most the frame height), is cut from the window's frames and flows at model
resolution and resized to ``size`` x ``size``; the flows stay in the frame's pixels (rescaling them by the
box size, so that speed is relative to an object's size, hid the speeding: about 0.60 in a prototype). An
AMSRC-Net of that size is trained (``training.train``) on the training split's regions; a test frame's
components are the largest over its regions (a frame with no moving region gets each component's training
minimum), and both of ``amvad eval``'s protocols follow: per-clip min-max and the service's causal scorer
(training statistics, running normalisation, smoothing).

Measured below the frame-level model (model card ``models/bundled/ped2-amsrc.md``), so the product scores
whole frames; this module keeps the comparison reproducible:
``python -m amvad.training.object_trial --data <Ped2 root> --out runs/amsrc_objects`` (the command in the card).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from amvad.models.metadata import ComponentStats
from amvad.models.registry import build_model
from amvad.runtime.device import pick_device
from amvad.runtime.scoring import StreamScorer, min_max_per_clip
from amvad.runtime.windows import scored_frames, window

from .config import load_config
from .data import ClipDataset, find_clips, load_labels
from .roc import roc_auc
from .train import clip_components, load_split, score_stats, train

CONFIG = Path(__file__).parent / "configs" / "ped2_amsrc.yaml"


@dataclass(frozen=True)
class Regions:
    """How motion regions are found and cut (pixels at model resolution)."""
    threshold: float = 0.3   # flow magnitude that counts as motion (walking pedestrians: 0.3-0.8 px)
    min_area: int = 20
    margin: int = 4
    min_side: int = 32
    size: int = 32           # side of the cut-out cube the network sees


def motion_boxes(flows: np.ndarray, r: Regions) -> list[tuple[int, int, int]]:
    """Square boxes (x0, y0, side) around the moving regions of a window: flows (T-1, 2, H, W) in pixels."""
    moving = (np.sqrt((flows ** 2).sum(1)).max(0) > r.threshold).astype(np.uint8)
    moving = cv2.morphologyEx(moving, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(moving)
    height, width = moving.shape
    boxes = []
    for x, y, w, h, area in stats[1:]:  # row 0 is the background
        if area < r.min_area:
            continue
        side = int(min(max(max(w, h) + 2 * r.margin, r.min_side), height, width))
        x0 = int(round(min(max(x + w / 2 - side / 2, 0), width - side)))
        y0 = int(round(min(max(y + h / 2 - side / 2, 0), height - side)))
        boxes.append((x0, y0, side))
    return boxes


def cut(frames: np.ndarray, flows: np.ndarray, box: tuple[int, int, int], size: int
        ) -> tuple[np.ndarray, np.ndarray]:
    """The window's frames (T, C, H, W) and flows (T-1, 2, H, W) inside ``box``, resized to ``size``."""
    x0, y0, side = box
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR

    def resize(planes: np.ndarray) -> np.ndarray:  # (N, K, H, W) -> (N, K, size, size)
        return np.stack([[cv2.resize(p[y0:y0 + side, x0:x0 + side], (size, size), interpolation=interp)
                          for p in stack] for stack in planes])
    return resize(frames).astype(np.float32), resize(flows).astype(np.float32)


def region_windows(frames: np.ndarray, flows: np.ndarray, clip_len: int, stride: int, r: Regions
                   ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int]]:
    """Every moving region of every scored frame of one clip as a one-window clip, and its frame id."""
    cubes, ids = [], []
    for fid in scored_frames(len(frames), clip_len, stride):
        f, o = window(frames, flows, fid, clip_len)
        for box in motion_boxes(o, r):
            cubes.append(cut(f, o, box, r.size))
            ids.append(fid)
    return cubes, ids


def frame_components(region_comps: np.ndarray, ids: list[int], frame_ids: range, floor: np.ndarray
                     ) -> np.ndarray:
    """Per frame, each component's largest value over the frame's regions ((N, K); ``floor`` without any)."""
    out = np.tile(floor, (len(frame_ids), 1))
    row = {fid: i for i, fid in enumerate(frame_ids)}
    for comps, fid in zip(region_comps, ids):
        out[row[fid]] = np.maximum(out[row[fid]], comps)
    return out


def run(data: Path, out: Path, *, epochs: int = 6, regions: Regions = Regions(), threads: int = 2) -> dict:
    """Train on the training split's regions, score the test split's, and report both protocols."""
    frame_cfg = load_config(CONFIG, {"data.root": str(data)})
    s = regions.size
    cfg = load_config(CONFIG, {"data.root": str(data), "out_dir": str(out), "optim.epochs": epochs,
                               "optim.batch_size": 32, "threads": threads, "model.args.height": s,
                               "model.args.width": s, "model.args.patch": s // 4})
    torch.set_num_threads(threads)
    device = pick_device(cfg.device)
    full = build_model(frame_cfg.model.method, **frame_cfg.model.args)  # the frames' size
    t = full.clip_len
    _, train_clips, _ = load_split(cfg, full, cfg.data.train_split, device)
    train_cubes = [c for frames, flows in train_clips
                   for c in region_windows(frames, flows, t, cfg.data.stride, regions)[0]]
    ckpt = torch.load(train(cfg, clips=([f"region {i}" for i in range(len(train_cubes))], train_cubes)),
                      map_location=device, weights_only=False)
    model = build_model(cfg.model.method, **cfg.model.args).to(device)
    model.load_state_dict(ckpt["model"])

    def regions_scored(frames: np.ndarray, flows: np.ndarray) -> tuple[np.ndarray, list[int], range]:
        cubes, ids = region_windows(frames, flows, t, 1, regions)
        comps = (np.concatenate(clip_components(model, ClipDataset(cubes, t), device))
                 if cubes else np.zeros((0, len(model.component_names))))
        return comps, ids, scored_frames(len(frames), t)

    scored = [regions_scored(f, o) for f, o in train_clips]
    floor = np.concatenate([c for c, _, _ in scored]).min(0)
    train_stats = score_stats(model, [frame_components(*r, floor) for r in scored], cfg)
    stats = [ComponentStats(**c) for c in train_stats["components"]]
    threshold, weights = train_stats["threshold"], np.array([c.weight for c in stats])
    names, test_clips, _ = load_split(cfg, full, cfg.data.test_split, device)
    labels = load_labels(data, cfg.data.test_split, find_clips(data, cfg.data.test_split),
                         [len(f) for f, _ in test_clips])
    comps, paper, stream, lab, per_clip = [], [], [], [], []
    for name, (frames, flows), clip_labels in zip(names, test_clips, labels):
        c = frame_components(*regions_scored(frames, flows), floor)
        y = clip_labels[t - 1:]
        p = min_max_per_clip(c, weights)
        q = StreamScorer(stats, threshold=threshold, smoothing=cfg.score.smoothing).score_clip(c)
        comps.append(c), paper.append(p), stream.append(q), lab.append(y)
        per_clip.append({"clip": name, "auc_paper": roc_auc(y, p), "auc_stream": roc_auc(y, q)})
    y, comps = np.concatenate(lab), np.concatenate(comps)
    return {"regions": regions.__dict__, "epochs": epochs, "train_regions": len(train_cubes),
            "train_seconds": round(ckpt["train_seconds"], 1), "threshold": threshold,
            "auc_paper": roc_auc(y, np.concatenate(paper)), "auc_stream": roc_auc(y, np.concatenate(stream)),
            "auc_components_raw": {n: roc_auc(y, comps[:, i]) for i, n in enumerate(model.component_names)},
            "per_clip": per_clip}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="dataset root (training and testing splits)")
    ap.add_argument("--out", type=Path, default=Path("runs/amsrc_objects"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the result here too")
    args = ap.parse_args()
    result = run(args.data, args.out, epochs=args.epochs, threads=args.threads)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
