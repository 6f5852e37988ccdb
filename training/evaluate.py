"""``amvad eval``: frame-level ROC AUC of an exported model on a labelled test split.

Two protocols: ``auc_paper`` min-max normalises each component per clip (as the papers do; it looks
at the whole clip) and ``auc_stream`` uses the service's causal scorer (training statistics, running
normalisation and smoothing over past frames only). Frames without a full history window are left out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.engine import ExportedModel
from service.scoring import StreamScorer, min_max_per_clip

from .data import find_clips, load_clip, load_labels
from .metrics import roc_auc


def evaluate(model: str | Path, data: str | Path, *, split: str = "testing", json_out: str | Path | None = None,
             plot_dir: str | Path | None = None, progress: bool = True) -> dict:
    t0 = time.time()
    em = ExportedModel(model)
    meta = em.meta
    weights = np.array([c.weight for c in meta.components])
    sources = find_clips(data, split)
    clips = [load_clip(s, height=meta.height, width=meta.width, channels=meta.channels)
             for s in tqdm(sources, desc="loading", disable=not progress)]
    labels = load_labels(data, split, sources, [len(c) for c in clips])
    t = meta.clip_len
    rows, all_lab, all_paper, all_stream, all_comp = [], [], [], [], []
    for src, frames, lab in tqdm(list(zip(sources, clips, labels)), desc="scoring", disable=not progress):
        comps = em.score_clip(frames)
        paper = min_max_per_clip(comps, weights)
        stream = StreamScorer.from_metadata(meta).score_clip(comps)
        lab = lab[t - 1:]
        all_lab.append(lab), all_paper.append(paper), all_stream.append(stream), all_comp.append(comps)
        rows.append({"clip": src.name, "frames": len(frames), "frames_scored": len(comps),
                     "anomalous": int(lab.sum()), "auc_paper": roc_auc(lab, paper),
                     "auc_stream": roc_auc(lab, stream), "stream_scores": np.round(stream, 4).tolist()})
        if plot_dir:
            plot_clip(Path(plot_dir) / f"{src.name}.png", src.name, np.arange(t - 1, len(frames)),
                      stream, lab, meta.threshold)
    lab, comp = np.concatenate(all_lab), np.concatenate(all_comp)
    result = {
        "model": str(em.path), "method": meta.method, "data": str(data), "split": split,
        "auc_paper": roc_auc(lab, np.concatenate(all_paper)),
        "auc_stream": roc_auc(lab, np.concatenate(all_stream)),
        "auc_components_raw": {c.name: roc_auc(lab, comp[:, i]) for i, c in enumerate(meta.components)},
        "frames_scored": int(len(lab)), "frames_total": int(sum(len(c) for c in clips)),
        "threshold": meta.threshold, "seconds": round(time.time() - t0, 1), "per_clip": rows,
    }
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1))
    return result


def plot_clip(path: Path, name: str, frame_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray,
              threshold: float) -> None:
    """Score curve of one clip with ground-truth anomalous frames shaded."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 2.8), dpi=100)
    ax.fill_between(frame_ids, 0, 1, where=labels.astype(bool), transform=ax.get_xaxis_transform(),
                    color="tab:red", alpha=0.18, step="mid", label="ground truth anomalous")
    ax.plot(frame_ids, scores, color="tab:blue", lw=1.4, label="causal score")
    ax.axhline(threshold, color="tab:gray", ls="--", lw=1, label="threshold")
    ax.set(xlabel="frame", ylabel="score", title=f"clip {name}")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
