"""Thresholds from normal footage, for a target false-alarm rate, and how much footage a fit needs.

Shared by ``amvad fit`` (threshold on held-out footage) and the service (``POST /v1/models/fit`` checks
footage up front; ``POST /v1/cameras/{id}/calibrate`` sets a live camera's threshold). A false alarm is
an *event* as the service raises it (runtime/events.py) on footage known to be normal, and an alarm that
stays on counts again for every full minute it lasts (else a threshold under every normal score would
be "one alarm per hour").
"""

from __future__ import annotations

import math

import numpy as np

from .events import EventConfig, replay_events

FIT_HOLDOUT = 0.1            # share of every clip (its end) a fit keeps aside to set the threshold
FIT_MIN_TRAIN_FRAMES = 300   # below this a model sees too little normal motion to learn from
REALERT_S = 60.0             # an alarm still on after this long counts as another false alarm


def fit_frames_needed() -> int:
    """Frames of footage a fit needs in all, hold-out included."""
    return math.ceil(FIT_MIN_TRAIN_FRAMES / (1 - FIT_HOLDOUT))


def check_fit_footage(frames: int, fps: float) -> None:
    """Raise ValueError saying how much footage is needed when ``frames`` is too little."""
    need = fit_frames_needed()
    if frames < need:
        raise ValueError(f"footage too short: {frames} frames ({frames / fps:.0f} s at {fps:g} fps); a fit needs "
                         f"at least {need} frames of normal footage ({need / fps:.0f} s at {fps:g} fps), the last "
                         f"{FIT_HOLDOUT:.0%} of each clip being kept to set the threshold")


def events_per_hour(scores: list[np.ndarray], fps: list[float], threshold: float,
                    events: EventConfig | None = None) -> float:
    """Anomaly events the service would raise on these clips of normal footage, per hour of footage."""
    ev = events or EventConfig()
    count, seconds = 0, 0.0
    for clip_scores, rate in zip(scores, fps):
        times = np.arange(len(clip_scores)) / rate
        count += sum(1 + int((e.end - e.start) // REALERT_S)
                     for e in replay_events(np.asarray(clip_scores), times, threshold, ev))
        seconds += len(clip_scores) / rate
    return count / max(seconds / 3600, 1e-9)


def pick_threshold(scores: list[np.ndarray], fps: list[float], target_per_hour: float, *,
                   floor: float = -math.inf, events: EventConfig | None = None) -> float:
    """The lowest threshold, not below ``floor``, at which these clips of normal footage raise at most
    ``target_per_hour`` events per hour (short footage can only show zero, so then: none at all)."""
    values = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores] + [np.array([floor])])
    candidates = np.unique(values[np.isfinite(values)])
    for t in candidates[candidates >= floor]:
        if events_per_hour(scores, fps, float(t), events) <= target_per_hour:
            return float(t)
    return float(candidates.max()) + 1e-6
