"""Per-frame anomaly flags -> anomaly events with hysteresis, minimum duration and cooldown.

An event starts when the score stays >= ``threshold`` for ``min_duration_s`` (counting only scores over a
full smoothing window: ``StreamScorer.settled``); it ends once the score
has stayed below ``threshold - hysteresis`` for ``cooldown_s`` (re-crossings meanwhile extend it), so
one bike crossing is one event. Times are the frames' timestamps in seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .camera_watch import CameraWatchConfig
from .types import AnomalyEvent


class EventConfig(BaseModel):
    """How per-frame anomaly flags become events, and (``camera_watch``) when the camera itself changed."""
    model_config = ConfigDict(extra="forbid")
    hysteresis: float = Field(0.5, ge=0, description="an event ends below threshold - hysteresis")
    min_duration_s: float = Field(0.3, ge=0, description="shorter excursions are not events")
    cooldown_s: float = Field(2.0, ge=0, description="re-crossings within this gap extend the event")
    camera_watch: CameraWatchConfig = Field(default_factory=CameraWatchConfig,
                                            description="tamper and scene_change events (runtime/camera_watch.py)")


class EventTracker:
    """Feed ``update`` one score per frame (None while warming up); returns "start", "end" or None."""

    def __init__(self, *, threshold: float, hysteresis: float = 0.5, min_duration_s: float = 0.3,
                 cooldown_s: float = 2.0, keep: int = 100) -> None:
        self.threshold, self.low = threshold, threshold - hysteresis
        self.min_duration_s, self.cooldown_s, self.keep = min_duration_s, cooldown_s, keep
        self.events: list[AnomalyEvent] = []
        self.open: AnomalyEvent | None = None
        self._candidate: tuple[float, int] | None = None   # (time, frame) of the first high frame
        self._below_since: tuple[float, int] | None = None  # when the open event went below `low`
        self._count = 0

    @classmethod
    def from_config(cls, threshold: float, config: EventConfig, keep: int = 100) -> EventTracker:
        return cls(threshold=threshold, hysteresis=config.hysteresis, min_duration_s=config.min_duration_s,
                   cooldown_s=config.cooldown_s, keep=keep)

    def set_threshold(self, threshold: float) -> None:
        """Move the threshold (and the end level below it) for the next frames."""
        self.threshold, self.low = threshold, threshold - (self.threshold - self.low)

    def update(self, t: float, frame_id: int, score: float | None) -> str | None:
        if score is None:
            return None
        if self.open is not None:
            return self._update_open(t, frame_id, score)
        if score < self.threshold:
            self._candidate = None
            return None
        if self._candidate is None:
            self._candidate = (t, frame_id)
        if t - self._candidate[0] >= self.min_duration_s:
            self._count += 1
            self.open = AnomalyEvent(self._count, self._candidate[0], self._candidate[1], score, frame_id)
            self.events = (self.events + [self.open])[-self.keep:]
            self._candidate = None
            return "start"
        return None

    def _update_open(self, t: float, frame_id: int, score: float) -> str | None:
        ev = self.open
        if score > ev.peak_score:
            ev.peak_score, ev.peak_frame = score, frame_id
        if score >= self.low:
            self._below_since = None
            return None
        if self._below_since is None:
            self._below_since = (t, frame_id)
        if t - self._below_since[0] >= self.cooldown_s:
            return self.close()
        return None

    def close(self) -> str | None:
        """End the open event at its first low frame (both callers record it first)."""
        if self.open is None:
            return None
        self.open.end, self.open.end_frame = self._below_since
        self.open, self._below_since = None, None
        return "end"

    def hold(self, t: float, frame_id: int) -> str | None:
        """A frame that says nothing about the scene (the camera is tampered with or its scene changes):
        an open event ends at it ("end"), a rise that was not an event yet is forgotten."""
        self._candidate = None
        if self.open is None:
            return None
        if self._below_since is None:
            self._below_since = (t, frame_id)
        return self.close()

    def snapshot(self, change: str | None) -> AnomalyEvent | None:
        """A copy of the event a frame belongs to: the open one, or (``change == "end"``) the one that
        just ended; None between events."""
        ev = self.open if self.open is not None else (self.events[-1] if change == "end" and self.events else None)
        return None if ev is None else dataclasses.replace(ev)

    def finish(self, t: float, frame_id: int) -> None:
        """End of the stream: an event still open ends at the last frame."""
        if self.open is not None and self._below_since is None:
            self._below_since = (t, frame_id)
        self.close()


def replay_events(scores: np.ndarray, times: np.ndarray, threshold: float, config: EventConfig,
                  settled: np.ndarray | None = None) -> list[AnomalyEvent]:
    """The events the service would raise on a finished series of scores (frame i at ``times[i]`` s);
    their ``start_frame`` / ``end_frame`` are indices into the series. ``settled``: which scores were over
    a full window (``FrameResult.settled``; the others start nothing, as in a stream); None = all."""
    tracker = EventTracker.from_config(threshold, config, keep=max(len(scores), 1))
    for i, (t, s) in enumerate(zip(times, scores)):
        tracker.update(float(t), i, float(s) if settled is None or settled[i] else None)
    if len(scores):
        tracker.finish(float(times[-1]), len(scores) - 1)
    return tracker.events
