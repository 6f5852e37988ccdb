"""One stream's inference: preprocess -> flow -> model -> causal score -> events.

Used for every camera and every uploaded clip. A gap in the frames (a frame id that does not follow
the previous one, or a new source segment after a reconnect) restarts the temporal window, and the
stream reports ``warming_up`` (score None) until ``clip_len`` consecutive frames are in.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from models.preprocess import to_model_frame

from .engine import ExportedModel
from .events import EventTracker
from .ingest import Frame
from .metrics import Metrics
from .scoring import StreamScorer

WARMING_UP, LIVE = "warming_up", "live"


@dataclass(frozen=True)
class FrameResult:
    """What one frame produced; ``heatmap`` (h, w) at model resolution, None while warming up."""
    frame_id: int
    timestamp: float
    score: float | None
    anomaly: bool
    state: str
    components: np.ndarray | None
    heatmap: np.ndarray | None
    event: str | None  # "start" / "end" when an anomaly event changed on this frame


class StreamPipeline:
    def __init__(self, model: ExportedModel, scorer: StreamScorer, events: EventTracker,
                 metrics: Metrics | None = None) -> None:
        self.model, self.scorer, self.events, self.metrics = model, scorer, events, metrics
        self.frames: deque[np.ndarray] = deque(maxlen=model.meta.clip_len)
        self.flows: deque[np.ndarray] = deque(maxlen=model.meta.clip_len - 1)
        self._last: tuple[int, int] | None = None  # (segment, frame_id) of the previous frame
        self.heat_scale = 0.0  # running typical heatmap peak on normal frames, for the overlay colours

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    @property
    def state(self) -> str:
        return LIVE if len(self.frames) == self.frames.maxlen else WARMING_UP

    def restart(self) -> None:
        """Forget the temporal window (after a gap); running statistics and events stay."""
        self.frames.clear()
        self.flows.clear()
        self.scorer.reset_window()

    def _timed(self, stage: str):
        return self.metrics.timed(stage) if self.metrics else nullcontext()

    def process(self, frame: Frame) -> FrameResult:
        if self._last is not None and (frame.segment, frame.frame_id) != (self._last[0], self._last[1] + 1):
            self.restart()
        self._last = (frame.segment, frame.frame_id)
        m = self.model.meta
        # "decode" stage: PyAV's decode in the ingest thread (frame.decode_s) plus the conversion to the
        # model input (resize, grey) here, observed once per frame
        t0 = time.perf_counter()
        x = to_model_frame(frame.pixels, height=m.height, width=m.width, channels=m.channels)
        if self.metrics:
            self.metrics.observe("decode", frame.decode_s + time.perf_counter() - t0)
        if self.frames:
            with self._timed("flow"):
                self.flows.append(self.model.compute_flows(np.stack([self.frames[-1], x]))[0])
        self.frames.append(x)
        if self.state != LIVE:
            return FrameResult(frame.frame_id, frame.timestamp, None, False, WARMING_UP, None, None,
                               None)
        with self._timed("model"):
            out = self.model.run(np.stack(self.frames)[None], np.stack(self.flows)[None])
        with self._timed("score"):
            components = out.components[0].astype(np.float64)
            score = self.scorer.update(components)
            anomaly = score >= self.scorer.threshold
            event = self.events.update(frame.timestamp, frame.frame_id, score)
        heat = out.heatmap[0, 0]
        if not anomaly:
            peak = float(np.percentile(heat, 99))
            self.heat_scale = peak if self.heat_scale == 0 else 0.98 * self.heat_scale + 0.02 * peak
        return FrameResult(frame.frame_id, frame.timestamp, score, bool(anomaly), LIVE, components, heat, event)

    def overlay_scale(self, heat: np.ndarray) -> float:
        """Colour scale for overlays: three times the typical normal peak (the frame's own peak early on)."""
        return 3.0 * self.heat_scale if self.heat_scale > 0 else float(heat.max()) or 1.0
