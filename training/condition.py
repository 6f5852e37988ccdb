"""``amvad export --onnx M --out N --condition-on DATA``: an exported model given conditioning
(``runtime.conditioning``) without retraining it.

The same graph gets the conditioning fitted on a split of ``DATA`` and then its score statistics and
threshold taken again from that split, scored as the service now scores it (conditioned, through a
:class:`~runtime.stream.Stream`): the statistics it was trained with are of frames that were not
conditioned, and the two differ (measured on ``ped2-amsrc`` with level matching: 7 % of the bundled
sample's normal frames over the threshold with its old statistics, 1.8 % with statistics taken again).
``--weights`` gives the components new weights on the way (a recipe's new score weights reach a trained
model without training it again: training does not use them).
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from amvad.models.metadata import ModelMetadata
from amvad.models.registry import resolve_model
from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.exported_model import read_metadata

from .config import ConditioningConfig, ScoreConfig
from .data import find_clips, split_conditioning
from .evaluate import score_clip
from .export import rewrite_metadata
from .train import checked_weights, statistics


def add_conditioning(source: str | Path, out: str | Path, data: str | Path, split: str = "training", *,
                     stabilise: bool = True, weights: list[float] | None = None,
                     engine_config: EngineConfig | None = None, progress: bool = True) -> ModelMetadata:
    """``source`` (a bundled name or a file) written to ``out`` with conditioning fitted on ``split`` of
    ``data`` and the score statistics of that split under it (the model's own smoothing and quantile).
    ``weights`` replaces the components' weights (the threshold is then taken under the new ones)."""
    meta = read_metadata(resolve_model(source))
    names = [c.name for c in meta.components]
    weights = checked_weights(names, weights, "--weights") if weights is not None else None
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
    quantile = (meta.training.get("config", {}).get("score", {}).get("threshold_quantile")
                or ScoreConfig().threshold_quantile)
    stats = statistics(names, weights or [c.weight for c in meta.components],
                       [c.components for c in clips if len(c.components)], meta.smoothing, quantile)
    return rewrite_metadata(out, out, **stats,
                            training={**meta.training, "statistics": f"{split} split of {data}, conditioned"})
