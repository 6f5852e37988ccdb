"""One stream's inference: preprocess -> flow -> model -> causal score -> events.

Used for every camera and every uploaded clip. ``submit`` preprocesses a frame and hands it to the shared
:class:`~service.batching.InferenceEngine`, which batches flow and model work across streams and calls
this pipeline's hooks in frame order; the returned future holds the :class:`FrameResult`. At most
``max_inflight`` frames of one stream are in the engine at once, so a stream that cannot keep up is held
back at its own queue (where a live camera drops its oldest frame) instead of flooding the engine.

A gap in the frames (a frame id that does not follow the previous one, or a new source segment after a
reconnect) restarts the temporal window, and the stream reports ``warming_up`` (score None) until
``clip_len`` consecutive frames are in.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from models.preprocess import to_model_frame

from .batching import InferenceEngine, Job
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
    def __init__(self, engine: InferenceEngine, scorer: StreamScorer, events: EventTracker,
                 metrics: Metrics | None = None, max_inflight: int | None = None) -> None:
        self.engine, self.model = engine, engine.model
        self.scorer, self.events, self.metrics = scorer, events, metrics
        clip_len = engine.meta.clip_len
        # the window, touched only by the engine's flow stage (in frame order)
        self.frames: deque[torch.Tensor] = deque(maxlen=clip_len)
        self.flows: deque[torch.Tensor] = deque(maxlen=clip_len - 1)
        self._prev: torch.Tensor | None = None
        self._last: tuple[int, int] | None = None  # (segment, frame_id) of the previous submitted frame
        self._broken = False  # a frame failed in the engine: the next one starts a new window
        self._slots = threading.BoundedSemaphore(max_inflight or engine.config.max_inflight)
        self.heat_scale = 0.0  # running typical heatmap peak on normal frames, for the overlay colours

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    @property
    def state(self) -> str:
        return LIVE if len(self.frames) == self.frames.maxlen else WARMING_UP

    # -- caller side -------------------------------------------------------------------------------
    def submit(self, frame: Frame) -> Future:
        """Preprocess ``frame`` and queue it; blocks while ``max_inflight`` frames are in the engine.
        The future's result is the frame's :class:`FrameResult` (or the error that broke its batch)."""
        restart = self._broken or (self._last is not None
                                   and (frame.segment, frame.frame_id) != (self._last[0], self._last[1] + 1))
        self._last, self._broken = (frame.segment, frame.frame_id), False
        m = self.engine.meta
        # "decode" stage: PyAV's decode in the ingest thread (frame.decode_s) plus the conversion to the
        # model input (resize, grey) here, observed once per frame
        t0 = time.perf_counter()
        x = self.engine.to_device(to_model_frame(frame.pixels, height=m.height, width=m.width, channels=m.channels))
        if self.metrics:
            self.metrics.observe("decode", frame.decode_s + time.perf_counter() - t0)
        self._slots.acquire()
        try:
            return self.engine.submit(Job(self, frame, x, restart))
        except BaseException:
            self._slots.release()
            raise

    def process(self, frame: Frame) -> FrameResult:
        """Score one frame and wait for it (no overlap between frames; see :func:`results_in_order`)."""
        return self.submit(frame).result()

    # -- engine hooks: flow stage ------------------------------------------------------------------
    def take_previous(self, job: Job) -> torch.Tensor | None:
        """The frame before ``job``'s in this stream's window (None after a restart)."""
        prev = None if job.restart else self._prev
        self._prev = job.x
        return prev

    def add_to_window(self, job: Job, flow: torch.Tensor | None) -> None:
        if job.restart:
            self.frames.clear()
            self.flows.clear()
        if flow is not None:
            self.flows.append(flow)
        self.frames.append(job.x)
        if len(self.frames) == self.frames.maxlen:
            job.windows = (torch.stack(tuple(self.frames)), torch.stack(tuple(self.flows)))

    # -- engine hooks: model stage -----------------------------------------------------------------
    def finish(self, job: Job, components: np.ndarray | None, heat: np.ndarray | None) -> None:
        """Score, update events, resolve the job's future (in frame order)."""
        frame = job.frame
        try:
            if job.restart:
                self.scorer.reset_window()
            if components is None:
                result = FrameResult(frame.frame_id, frame.timestamp, None, False, WARMING_UP, None, None, None)
            else:
                t0 = time.perf_counter()
                components = components.astype(np.float64)
                score = self.scorer.update(components)
                anomaly = score >= self.scorer.threshold
                event = self.events.update(frame.timestamp, frame.frame_id, score)
                if not anomaly:
                    peak = float(np.percentile(heat, 99))
                    self.heat_scale = peak if self.heat_scale == 0 else 0.98 * self.heat_scale + 0.02 * peak
                result = FrameResult(frame.frame_id, frame.timestamp, score, bool(anomaly), LIVE, components,
                                     heat, event)
                if self.metrics:
                    for stage, seconds in job.stage_s.items():
                        self.metrics.observe(stage, seconds)
                    self.metrics.observe("score", time.perf_counter() - t0)
            if self.metrics:
                self.metrics.observe_latency(time.perf_counter() - job.submitted)
        except Exception as exc:
            self.fail(job, exc)
            return
        self._slots.release()
        job.future.set_result(result)

    def fail(self, job: Job, exc: BaseException) -> None:
        """The engine could not finish ``job``: report the error; the stream's next frame restarts."""
        if job.future.done():
            return
        self._broken = True
        self._slots.release()
        job.future.set_exception(exc)

    def overlay_scale(self, heat: np.ndarray) -> float:
        """Colour scale for overlays: three times the typical normal peak (the frame's own peak early on)."""
        return 3.0 * self.heat_scale if self.heat_scale > 0 else float(heat.max()) or 1.0


def results_in_order(pipeline: StreamPipeline, frames: Iterable[Frame]) -> Iterator[tuple[Frame, FrameResult]]:
    """Feed ``frames`` as fast as the pipeline admits them (flow of frame t+1 overlaps the model of frame
    t) and yield each frame with its result, in order. For files; a live camera publishes from its own
    thread instead, so no result waits for the next frame to arrive."""
    pending: deque[tuple[Frame, Future]] = deque()
    for frame in frames:
        pending.append((frame, pipeline.submit(frame)))
        while pending and pending[0][1].done():
            f, fut = pending.popleft()
            yield f, fut.result()
    while pending:
        f, fut = pending.popleft()
        yield f, fut.result()
