"""Causal scoring: training statistics, running normalisation and smoothing over past frames only.

score(t) = mean over the last ``smoothing`` frames of sum_k w_k * (c_k - mu_k) / sigma_k, where mu and
sigma start at the training statistics and follow frames judged normal (under the threshold and under the
model's ``learn_threshold``) with exponential forgetting; with
``smoothing_drop`` = d the window's d highest frame scores are left out of that mean, so a one-frame spike
(a codec's block jumping, a flow's mistake) does not raise it, while an object that stays anomalous does.
Higher = more anomalous; ``score >= threshold`` flags an anomaly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from amvad.models.metadata import ComponentStats, ModelMetadata, check_smoothing_drop

# Running-stats forgetting per frame judged normal (time constant ~500 frames); the service config's default.
DEFAULT_FORGET = 0.002


@dataclass
class RunningStats:
    """Per-component running mean and variance, updated only with frames judged normal."""
    mean: np.ndarray
    var: np.ndarray
    count: int = 0

    @classmethod
    def from_components(cls, components: list[ComponentStats]) -> RunningStats:
        return cls(mean=np.array([c.mean for c in components], dtype=np.float64),
                   var=np.array([c.std ** 2 for c in components], dtype=np.float64))

    def update(self, x: np.ndarray, forget: float) -> None:
        delta = x - self.mean
        self.mean = self.mean + forget * delta
        self.var = (1.0 - forget) * (self.var + forget * delta * delta)
        self.count += 1

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, d: dict) -> RunningStats:
        return cls(mean=np.asarray(d["mean"], dtype=np.float64),
                   var=np.asarray(d["var"], dtype=np.float64), count=int(d["count"]))


class StreamScorer:
    """Turns per-frame score components into causal, normalised scores for one stream."""

    def __init__(self, components: list[ComponentStats], *, threshold: float, smoothing: int,
                 forget: float = DEFAULT_FORGET, min_std_ratio: float = 0.5,
                 stats: RunningStats | None = None, drop: int = 0, learn_threshold: float | None = None) -> None:
        check_smoothing_drop(smoothing, drop)
        self.weights = np.array([c.weight for c in components], dtype=np.float64)
        self.train_std = np.array([c.std for c in components], dtype=np.float64)
        self.threshold = threshold
        # frames are learned from under both: a threshold raised for benign changes (or by an operator) does
        # not let the statistics learn frames the clean footage never scored
        self.learn_threshold = np.inf if learn_threshold is None else learn_threshold
        self.forget = forget                # exponential forgetting per frame judged normal
        self.min_std_ratio = min_std_ratio  # running std never drops below this share of training std
        self.stats = stats or RunningStats.from_components(components)
        self._recent: deque[float] = deque(maxlen=smoothing)
        self.drop = drop

    @classmethod
    def from_metadata(cls, meta: ModelMetadata, **kwargs) -> StreamScorer:
        kwargs.setdefault("threshold", meta.threshold)
        return cls(meta.components, smoothing=meta.smoothing, drop=meta.smoothing_drop,
                   learn_threshold=meta.learn_threshold, **kwargs)

    def normalise(self, components: np.ndarray) -> float:
        """Weighted z-score of one frame's components under the current running stats."""
        std = np.maximum(np.sqrt(self.stats.var), self.min_std_ratio * self.train_std)
        return float(np.dot(self.weights, (components - self.stats.mean) / std))

    def update(self, components: np.ndarray, *, carried: bool = False) -> float:
        """Score one frame (components of shape (K,)) and learn from it if it looks normal. ``carried``: its
        errors measure the codec rather than the scene (:func:`gop_starts`): it scores the window's mean as
        it stands, with nothing added and nothing learned (unless the window is empty)."""
        if carried and self._recent:
            return self.window_score()
        components = np.asarray(components, dtype=np.float64)
        self._recent.append(self.normalise(components))
        score = self.window_score()
        if score < min(self.threshold, self.learn_threshold) and self.forget > 0:
            self.stats.update(components, self.forget)
        return score

    @property
    def settled(self) -> bool:
        """The window is full: the score is the mean over ``smoothing`` frames it is meant to be, not that of
        the first few frames of a stream (or of those after a gap), whose mean of one or two frame scores
        swings as far as a single frame's. Only a settled score may start an event (runtime/stream.py)."""
        return len(self._recent) == self._recent.maxlen

    def window_score(self) -> float:
        """The mean of the window's frame scores but its ``drop`` highest (fewer while the window fills:
        it always keeps more than half of what it holds)."""
        if not self.drop:
            return float(np.mean(self._recent))
        kept = sorted(self._recent)[:len(self._recent) - min(self.drop, (len(self._recent) - 1) // 2)]
        return float(np.mean(kept))

    def score_clip(self, components: np.ndarray, carried: np.ndarray | None = None) -> np.ndarray:
        """Causal scores of consecutive frames, (N, K) -> (N,); ``carried``: (N,) bool, see :meth:`update`."""
        carried = np.zeros(len(components), bool) if carried is None else carried
        return np.array([self.update(c, carried=bool(k)) for c, k in zip(components, carried)])

    def reset_window(self) -> None:
        """Forget the smoothing window (after a gap in the stream); keep the learned stats."""
        self._recent.clear()

    def rebaseline(self, components: np.ndarray) -> None:
        """The camera's scene changed at once (lights, an IR switch): re-baseline on the frames since,
        (N, K), so the new scene scores as normal from now on instead of alarming until slow forgetting
        catches up (frames over the threshold are never learned from, so it would not). A light changes a
        prediction error by a factor (brighter pixels, larger errors), so each positive component's mean and
        spread are scaled by the ratio of the frames' median to the mean; a component that is not positive
        only has its mean moved to that median."""
        components = np.asarray(components, dtype=np.float64)
        if components.ndim != 2 or not len(components):
            return
        median, mean = np.median(components, axis=0), self.stats.mean
        positive = (median > 0) & (mean > 0)
        ratio = np.where(positive, median / np.where(positive, mean, 1.0), 1.0)
        self.stats.mean = np.where(positive, mean * ratio, median)
        self.stats.var = self.stats.var * ratio ** 2
        self._recent.clear()


def gop_starts(keyframes: np.ndarray) -> np.ndarray:
    """Where a coded stream starts a new group of pictures, (N,) bool -> (N,) bool: a keyframe right after a
    predicted frame. At a low bitrate the codec's artefacts change all at once there and the frame's
    prediction and flow errors jump with them, so it is not scored (runtime/stream.py)."""
    keyframes = np.asarray(keyframes, bool)
    return np.concatenate([[False], keyframes[1:] & ~keyframes[:-1]])


def training_scores(components: list[ComponentStats], clip_components: np.ndarray, smoothing: int,
                    carried: np.ndarray | None = None, drop: int = 0) -> np.ndarray:
    """Causal scores of one clip under the training statistics alone (no running updates, no threshold):
    what thresholds are set on, so a threshold never chases itself. (N, K) -> (N,); ``carried``: the frames
    that start a group of pictures (:func:`gop_starts`), scored as a stream scores them."""
    return StreamScorer(components, threshold=np.inf, smoothing=smoothing, forget=0.0, drop=drop).score_clip(
        clip_components, carried)


def min_max_per_clip(components: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The papers' protocol (looks at the whole clip, not causal): min-max normalise each component
    over the clip, then take the weighted sum. components: (N, K) -> (N,)."""
    lo, hi = components.min(0), components.max(0)
    return ((components - lo) / np.maximum(hi - lo, 1e-12)) @ weights
