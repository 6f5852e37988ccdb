"""``amvad export --onnx M --out N --condition-on DATA``: an exported model given conditioning
(``runtime.conditioning``) without retraining it.

The same graph gets the conditioning fitted on a split of ``DATA`` and then its score statistics and
threshold taken again from that split, scored as the service now scores it (conditioned, through a
:class:`~runtime.stream.Stream`): the statistics it was trained with are of frames that were not
conditioned, and the two differ (measured on ``ped2-amsrc`` with level matching: 7 % of the bundled
sample's normal frames over the threshold with its old statistics, 1.8 % with statistics taken again).
``--weights``, ``--smoothing``, ``--smoothing-drop`` and ``--threshold-quantile`` give the score new weights,
window and quantile on the way (a recipe's new ``score`` reaches a trained model without training it again:
training does not use it). Last, :func:`blur_tolerance` measures how
soft a picture the model still judges, and the camera watch holds a softer one as a defocused tamper
instead of letting it raise anomalies.
"""

from __future__ import annotations

import math
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from amvad.models.metadata import ModelMetadata
from amvad.models.registry import resolve_model
from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.events import EventConfig
from amvad.runtime.exported_model import read_metadata

from .config import ConditioningConfig, ScoreConfig
from .data import ClipSource, find_clips, iter_clip_frames, split_conditioning
from .evaluate import score_clip, score_frames
from .export import rewrite_metadata
from .perturbations import BATTERY, perturb_clip
from .robustness import normal_figures, pick
from .train import checked_weights, statistics

# Gaussian blur sigmas (source pixels) tried, mildest first: the battery's sweep (training/perturbations.py)
# with a step between its last two; beyond them the camera watch's own defocus_ratio (sigma 4-5 at 360x240)
BLUR_LADDER = (0.75, 1.5, 2.25, 3.0)
MAX_FLAGGED = 0.02  # share of normal frames a benign change may flag (issue 22's target)
MAX_MIN_SHARPNESS = 0.5  # a limit never reaches the footage's own sharpness (clean Ped2 frames: 0.8-1.0)
TOLERANCE_CLIPS, TOLERANCE_FRAMES = 4, 200  # clips of the footage, frames of each (a fit's may be long)


def add_conditioning(source: str | Path, out: str | Path, data: str | Path, split: str = "training", *,
                     stabilise: bool = True, weights: list[float] | None = None, smoothing: int | None = None,
                     smoothing_drop: int | None = None, threshold_quantile: float | None = None,
                     engine_config: EngineConfig | None = None, progress: bool = True) -> ModelMetadata:
    """``source`` (a bundled name or a file) written to ``out`` with conditioning fitted on ``split`` of
    ``data`` and the score statistics of that split under it. ``weights``, ``smoothing`` (the window),
    ``smoothing_drop`` and ``threshold_quantile`` replace the model's own (the threshold is then taken under
    the new ones); the score it ends with is recorded as its training config's ``score``, where the next
    conditioning and a recipe check read it."""
    meta = read_metadata(resolve_model(source))
    names = [c.name for c in meta.components]
    recorded = meta.training.get("config", {}).get("score", {})
    score = ScoreConfig(  # checked before the long part
        weights=(checked_weights(names, weights, "--weights") if weights is not None
                 else [c.weight for c in meta.components]),
        smoothing=meta.smoothing if smoothing is None else smoothing,
        smoothing_drop=meta.smoothing_drop if smoothing_drop is None else smoothing_drop,
        threshold_quantile=(threshold_quantile if threshold_quantile is not None
                            else recorded.get("threshold_quantile", ScoreConfig().threshold_quantile)))
    conditioning = split_conditioning(data, split, height=meta.height, width=meta.width, channels=meta.channels,
                                      cfg=ConditioningConfig(stabilise=stabilise))
    rewrite_metadata(source, out, conditioning=conditioning)
    sources = find_clips(data, split)
    engine = InferenceEngine(out, engine_config)
    try:
        clips = [score_clip(engine, src) for src in tqdm(sources, desc="statistics", unit="clip",
                                                          disable=not progress)]
    finally:
        engine.close()
    stats = statistics(names, score.weights, [c.components for c in clips if len(c.components)], score.smoothing,
                       score.threshold_quantile, score.smoothing_drop)
    config = {**meta.training.get("config", {}), "score": score.model_dump()}
    rewrite_metadata(out, out, **stats, training={**meta.training, "config": config,
                                                  "statistics": f"{split} split of {data}, conditioned"})
    return set_blur_limit(out, sources, engine_config=engine_config, progress=progress)


def set_blur_limit(model: str | Path, sources: list[ClipSource], *, engine_config: EngineConfig | None = None,
                   progress: bool = True) -> ModelMetadata:
    """The exported ``model`` (with conditioning) written again with its ``min_sharpness`` measured on
    ``sources``, its normal footage (:func:`blur_tolerance`). A limit it had is cleared first: frames held
    under it would not count as flagged."""
    conditioning = read_metadata(model).conditioning
    if conditioning.min_sharpness is not None:
        rewrite_metadata(model, model, conditioning=conditioning.model_copy(update={"min_sharpness": None}))
    limit = blur_tolerance(model, sources, engine_config=engine_config, progress=progress)
    return rewrite_metadata(model, model, conditioning=conditioning.model_copy(update={"min_sharpness": limit}))


def set_blur_limit_from_training(model: str | Path, *, progress: bool = True) -> ModelMetadata:
    """:func:`set_blur_limit` on the training split a trained model's metadata names (a run exported from its
    checkpoint, which carries no footage); FileNotFoundError when that split is not on this machine."""
    meta = read_metadata(model)
    data = meta.training.get("data")
    if data is None:
        raise FileNotFoundError(f"{model}: its metadata names no training data")
    split = meta.training.get("config", {}).get("data", {}).get("train_split") or "training"
    return set_blur_limit(model, find_clips(data, split), progress=progress)


def blur_tolerance(model: str | Path, sources: list[ClipSource], *, clips: int = TOLERANCE_CLIPS,
                   max_frames: int = TOLERANCE_FRAMES, engine_config: EngineConfig | None = None,
                   progress: bool = True) -> float | None:
    """The sharpness (against the training frames', as the conditioning measures it) under which ``model``
    does not judge a picture: the footage (the first ``max_frames`` of ``clips`` of ``sources``, all normal)
    blurred along ``BLUR_LADDER`` and scored as the service scores it; at the mildest blur that flags more
    than ``MAX_FLAGGED`` of its frames, the geometric mean of that blur's median sharpness and the one
    before it (1 for the first), at most ``MAX_MIN_SHARPNESS``. None when no blur of the ladder does.

    Why: a model that leans on fine detail (AMSRC-Net's appearance stream) takes a fogged dome for
    anomalous motion on every frame; held as a ``defocused`` tamper it says what happened instead."""
    engine = InferenceEngine(model, engine_config)
    footage = [(src.name, list(islice(iter_clip_frames(src), max_frames))) for src in pick(sources, clips)]
    before = 1.0
    try:
        for sigma in tqdm(BLUR_LADDER, desc="blur tolerance", unit="blur", disable=not progress):
            scored = [score_frames(engine, name, perturb_clip(BATTERY["blur"], sigma, frames)) for name, frames in footage]
            figures = normal_figures(scored, engine.meta.threshold, EventConfig())
            now = figures["sharpness_ratio"]
            if now is None:
                return None  # sharpness not measured: nothing for the watch to compare
            if figures["frames_flagged"] > MAX_FLAGGED:
                return round(min(math.sqrt(now * before), MAX_MIN_SHARPNESS), 3)
            before = now
    finally:
        engine.close()
    return None
