"""``amvad eval``: frame-level ROC AUC of an exported model on a labelled test split.

Every clip is scored the way the service scores an upload: decoded frames go through a
:class:`~runtime.stream.Stream` on the shared :class:`~runtime.engine.InferenceEngine` (preprocessing,
flow, ONNX Runtime, causal scorer), so the number reported is measured on the path users hit. Results carry
their frame ids, and labels are looked up by frame id; frames without a full history window have no score
and are left out. Two protocols: ``auc_paper`` min-max normalises each component per clip (as the papers
do; it looks at the whole clip) and ``auc_stream`` is the stream's causal score (training statistics,
running normalisation and smoothing over past frames only). For both, :mod:`training.alarms` adds what an
operator can expect (false alarms per hour, caught events, detection delays) and ``plot_dir`` receives the
ROC curves and each clip's score curve.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.engine import EngineConfig, InferenceEngine
from runtime.events import EventConfig
from runtime.plots import score_plot
from runtime.scoring import min_max_per_clip
from runtime.stream import Stream, results_in_order

from .alarms import LabelledScores, alarm_report
from .data import ClipSource, find_clips, iter_clip_frames, labels_file, load_labels
from .roc import roc_auc, roc_curve


@dataclass
class ClipScores:
    """What the service's path gave for one clip: the ids and timestamps of the scored frames, their raw
    components (N, K) and causal scores (N,), and how many frames the clip has."""
    name: str
    frames: int
    frame_ids: np.ndarray
    timestamps: np.ndarray
    components: np.ndarray
    stream: np.ndarray


def score_clip(engine: InferenceEngine, src: ClipSource) -> ClipScores:
    """Score one clip as a fresh stream (as an upload is), keeping only frames with a full window."""
    ids, times, comps, scores, n = [], [], [], [], 0
    for frame, r in results_in_order(Stream(engine), iter_clip_frames(src)):
        n += 1
        if r.score is not None:
            ids.append(frame.frame_id), times.append(frame.timestamp), comps.append(r.components)
            scores.append(r.score)
    if not ids:
        raise ValueError(f"clip {src.name}: {n} frames, fewer than the model's clip length {engine.meta.clip_len}")
    return ClipScores(src.name, n, np.array(ids), np.array(times), np.stack(comps), np.array(scores))


def evaluate(model: str | Path, data: str | Path, *, split: str = "testing", json_out: str | Path | None = None,
             plot_dir: str | Path | None = None, progress: bool = True,
             engine_config: EngineConfig | None = None) -> dict:
    t0 = time.time()
    engine = InferenceEngine(model, engine_config)
    try:
        meta = engine.meta
        sources = find_clips(data, split)
        labels_file(data, split)  # fail before the long part when there are no labels
        clips = [score_clip(engine, s) for s in tqdm(sources, desc="scoring", disable=not progress)]
    finally:
        engine.close()
    weights = np.array([c.weight for c in meta.components])
    labels = load_labels(data, split, sources, [c.frames for c in clips])
    rows, paper_clips, stream_clips = [], [], []
    for clip, lab in zip(clips, labels):
        lab = lab[clip.frame_ids]
        paper = min_max_per_clip(clip.components, weights)
        paper_clips.append(LabelledScores(clip.frame_ids, paper, lab, clip.timestamps))
        stream_clips.append(LabelledScores(clip.frame_ids, clip.stream, lab, clip.timestamps))
        rows.append({"clip": clip.name, "frames": clip.frames, "frames_scored": len(clip.frame_ids),
                     "anomalous": int(lab.sum()), "auc_paper": roc_auc(lab, paper),
                     "auc_stream": roc_auc(lab, clip.stream), "stream_scores": np.round(clip.stream, 4).tolist()})
        if plot_dir:
            score_plot(clip.frame_ids, clip.stream, meta.threshold, title=f"clip {clip.name}", labels=lab,
                       path=Path(plot_dir) / f"{clip.name}.png")
    lab = np.concatenate([c.labels for c in stream_clips])
    comp = np.concatenate([c.components for c in clips])
    pooled = {"paper": np.concatenate([c.scores for c in paper_clips]),
              "stream": np.concatenate([c.scores for c in stream_clips])}
    events = EventConfig()
    result = {
        "model": str(engine.model.path), "method": meta.method, "data": str(data), "split": split,
        "auc_paper": roc_auc(lab, pooled["paper"]), "auc_stream": roc_auc(lab, pooled["stream"]),
        "auc_components_raw": {c.name: roc_auc(lab, comp[:, i]) for i, c in enumerate(meta.components)},
        "frames_scored": int(len(lab)), "frames_total": int(sum(c.frames for c in clips)),
        "threshold": meta.threshold,
        # The model's threshold is in stream-score units; per-clip min-max scores have no threshold of
        # their own, so the paper protocol reports only the operating point at the recall target.
        "alarms": {"stream": alarm_report(stream_clips, meta.threshold, events),
                   "paper": alarm_report(paper_clips, None, events.model_copy(update={"hysteresis": 0.0}))},
        "seconds": round(time.time() - t0, 1), "per_clip": rows,
    }
    if plot_dir:
        plot_roc(Path(plot_dir) / "roc.png", lab, pooled, meta.method)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1))
    return result


def plot_roc(path: Path, labels: np.ndarray, scores: dict[str, np.ndarray], title: str) -> None:
    """Pooled frame-level ROC curve of each protocol, with its AUC in the legend (score curves of clips:
    :func:`runtime.plots.score_plot`)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    for name, s in scores.items():
        fpr, tpr = roc_curve(labels, s)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc(labels, s):.3f})")
    ax.plot([0, 1], [0, 1], color="tab:gray", ls=":", lw=1)
    ax.set(xlabel="false positive rate (normal frames)", ylabel="true positive rate (anomalous frames)",
           title=f"ROC, {title}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
