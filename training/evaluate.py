"""``amvad eval``: frame-level ROC AUC of an exported model on a labelled test split.

Every clip is scored the way the service scores an upload: decoded frames go through a
:class:`~runtime.stream.Stream` on the shared :class:`~runtime.engine.InferenceEngine` (preprocessing,
flow, the model on its backend, causal scorer), so the number reported is measured on the path users hit;
the engine's settings choose the backend and precision. Results carry their frame ids, and labels are
looked up by frame id; frames without a full history window have no score and are left out. Two
protocols: ``auc_paper`` min-max normalises each component per clip (as the papers do; it looks at the
whole clip) and ``auc_stream`` is the stream's causal score (training statistics, running normalisation and
smoothing over past frames only). For both, :mod:`training.alarms` adds what an operator can expect (false
alarms per hour, caught events, detection delays) and ``plot_dir`` receives the ROC curves and each clip's
score curve. A run on another backend or precision than fp32 ONNX Runtime also scores the clips on that
reference and reports their parity (:mod:`runtime.parity`); ``record`` writes it beside the model, where
the service looks before it runs that precision.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from tqdm import tqdm

from amvad.runtime import parity
from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.events import EventConfig
from amvad.runtime.plots import score_plot
from amvad.runtime.scoring import DEFAULT_FORGET, RunningStats, min_max_per_clip
from amvad.runtime.stream import Stream, results_in_order
from amvad.runtime.types import Frame

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
    held_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))      # frames the camera
    held_timestamps: np.ndarray = field(default_factory=lambda: np.empty(0))        # watch held (not scored)
    # every frame's picture against the fitted footage (runtime.conditioning: FrameCondition.sharpness and
    # .noise), NaN where not measured (a model without conditioning)
    sharpness: np.ndarray = field(default_factory=lambda: np.empty(0))
    noise: np.ndarray = field(default_factory=lambda: np.empty(0))
    # per scored frame: its score was over a full window (FrameResult.settled), so it could start an event;
    # None = all were
    settled: np.ndarray | None = None
    # every frame's model-free speed score (training.motion_reference), when the benchmark asks for it
    reference: np.ndarray | None = None


def score_clip(engine: InferenceEngine, src: ClipSource) -> ClipScores:
    """Score one clip as a fresh stream (as an upload is), keeping only frames with a full window."""
    return score_frames(engine, src.name, iter_clip_frames(src))


def score_frames(engine: InferenceEngine, name: str, frames: Iterable[Frame],
                 stats: RunningStats | None = None, forget: float = DEFAULT_FORGET,
                 threshold: float | None = None) -> ClipScores:
    """:func:`score_clip` for frames from anywhere (e.g. a perturbed clip, training/robustness.py);
    ``stats``: running statistics to start from, updated in place (a camera's, carried from clip to clip),
    at the stream's rate ``forget``; ``threshold``: a camera's own (None: the model's), which also bounds
    what the stream learns from."""
    ids, times, comps, scores, settled, held, picture, n = [], [], [], [], [], [], [], 0
    for frame, r in results_in_order(Stream(engine, stats=stats, forget=forget, threshold=threshold), frames):
        n += 1
        picture.append((None, None) if r.condition is None else (r.condition.sharpness, r.condition.noise))
        if r.score is not None:
            ids.append(frame.frame_id), times.append(frame.timestamp), comps.append(r.components)
            scores.append(r.score), settled.append(r.settled)
        elif r.held:
            held.append((frame.frame_id, frame.timestamp))
    if not ids and not held:
        raise ValueError(f"clip {name}: {n} frames, fewer than the model's clip length {engine.meta.clip_len}")
    k = len(engine.meta.components)
    picture = np.array(picture, np.float64).reshape(-1, 2)  # None (not measured) -> NaN
    return ClipScores(name, n, np.array(ids, np.int64), np.array(times), np.stack(comps) if comps else np.empty((0, k)),
                      np.array(scores), np.array([i for i, _ in held], np.int64), np.array([t for _, t in held]),
                      sharpness=picture[:, 0], noise=picture[:, 1], settled=np.array(settled, bool))


def score_clips(model: str | Path, data: str | Path, split: str, engine_config: EngineConfig | None,
                progress: bool, desc: str = "scoring") -> tuple[InferenceEngine, list[ClipSource], list[ClipScores]]:
    """Every clip of the split scored on a fresh engine (closed again before returning)."""
    engine = InferenceEngine(model, engine_config)
    try:
        sources = find_clips(data, split)
        labels_file(data, split)  # fail before the long part when there are no labels
        clips = [score_clip(engine, s) for s in tqdm(sources, desc=desc, disable=not progress)]
    finally:
        engine.close()
    return engine, sources, clips


def evaluate(model: str | Path, data: str | Path, *, split: str = "testing", json_out: str | Path | None = None,
             plot_dir: str | Path | None = None, progress: bool = True,
             engine_config: EngineConfig | None = None, record: bool = False) -> dict:
    t0 = time.time()
    engine_config = engine_config or EngineConfig()
    if engine_config.precision not in ("auto", "fp32"):  # measured here, so not held to a record yet
        engine_config = engine_config.model_copy(update={"precision_gate": False})
    engine, sources, clips = score_clips(model, data, split, engine_config, progress)
    result = report(engine, data, split, sources, clips, plot_dir)
    result["seconds"] = round(time.time() - t0, 1)
    if (engine.model.backend.name, engine.model.precision.used) != ("onnxruntime", "fp32"):
        check = parity_check(engine, data, split, clips, result, progress)
        result["parity"] = check.model_dump() | {"verdict": check.verdict()}
        if record:
            result["parity"]["record"] = str(parity.write_check(engine.model.path, engine.model.sha256, check))
    elif record:
        raise ValueError("--record needs a backend or precision other than fp32 ONNX Runtime to compare")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1))
    return result


def report(engine: InferenceEngine, data: str | Path, split: str, sources: list[ClipSource],
           clips: list[ClipScores], plot_dir: str | Path | None) -> dict:
    """AUC of both protocols, alarms and per-clip figures of scored clips (plots into ``plot_dir``)."""
    meta = engine.meta
    weights = np.array([c.weight for c in meta.components])
    labels = load_labels(data, split, sources, [c.frames for c in clips])
    rows, paper_clips, stream_clips = [], [], []
    for clip, lab in zip(clips, labels):
        lab = lab[clip.frame_ids]
        paper = min_max_per_clip(clip.components, weights)
        paper_clips.append(LabelledScores(clip.frame_ids, paper, lab, clip.timestamps))
        stream_clips.append(LabelledScores(clip.frame_ids, clip.stream, lab, clip.timestamps, clip.settled))
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
        "backend": engine.model.backend.name, "precision": engine.model.precision.used,
        "precision_note": engine.model.precision.note, "per_clip": rows,
    }
    if plot_dir:
        plot_roc(Path(plot_dir) / "roc.png", lab, pooled, meta.method)
    return result


def parity_check(engine: InferenceEngine, data: str | Path, split: str, clips: list[ClipScores], result: dict,
                 progress: bool) -> parity.ParityCheck:
    """The same clips on fp32 ONNX Runtime (the reference), compared with ``clips``: how far each component
    moved in units of its spread, and the AUC of both protocols."""
    reference = EngineConfig(device="cpu", backend="onnxruntime", precision="fp32",
                             flow_threads=engine.flow_threads, model_threads=engine.model_threads)
    ref_engine, sources, ref_clips = score_clips(engine.model.path, data, split, reference, progress,
                                                 desc="fp32 reference")
    ref_result = report(ref_engine, data, split, sources, ref_clips, None)
    got = np.concatenate([c.components for c in clips])
    want = np.concatenate([c.components for c in ref_clips])
    shift = np.abs(got - want) / np.maximum(want.std(axis=0), 1e-12)
    p99, worst = float(np.percentile(shift, 99, axis=0).max()), float(shift.max())
    auc = (result["auc_paper"], ref_result["auc_paper"], result["auc_stream"], ref_result["auc_stream"])
    return parity.ParityCheck(
        backend=engine.model.backend.name, precision=engine.model.precision.used,
        passed=parity.judge(p99, (auc[0] - auc[1], auc[2] - auc[3])), component_shift_p99=round(p99, 5),
        component_shift_max=round(worst, 5), auc_paper=auc[0], auc_paper_fp32=auc[1], auc_stream=auc[2],
        auc_stream_fp32=auc[3], data=f"{Path(data).name} {split}", frames=int(len(got)), date=date.today().isoformat())


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
