"""One stream's inference: preprocess -> engine (flow, model) -> causal score -> events.

Every camera, every uploaded clip and every clip of ``amvad eval`` is a :class:`Stream`, built here and
nowhere else. ``submit`` preprocesses a frame and hands it to the shared
:class:`~runtime.engine.InferenceEngine`, which keeps the stream's window, batches flow and model work
across streams and hands back each frame's output once, in frame order; the returned future holds the
:class:`~runtime.types.FrameResult`. At most ``max_inflight`` frames of one stream are in the engine at
once, so a stream that cannot keep up is held back at its own queue (where a live camera drops its
oldest frame) instead of flooding the engine.

A gap in the frames (a frame id that does not follow the previous one, or a new source segment after a
reconnect) restarts the temporal window, and the stream reports ``warming_up`` (score None) until
``clip_len`` consecutive frames are in. Its first scores after that are the mean of a smoothing window
still filling (one frame's score, then two ...), which swing as far as a single frame's: they are reported
and flagged, but only a score over a full window (``FrameResult.settled``) starts an anomaly event. On
Ped2's normal footage every clip is a fresh stream, and the events the bundled models still raised under
benign changes began on such frames (the start of normal clips 02 and 03, README "Robustness").

Each frame's condition also feeds the stream's :class:`~runtime.camera_watch.CameraWatch`. While it holds
(a tamper, a scene change settling, or the frames before either is raised) frames are not scored: score
None, no anomaly, nothing learned, an open anomaly event ends. The window restarts where a hold begins and
where it ends, so no score mixes held frames with scored ones (and the flow never spans a light switched
on). When a scene change settles the running mean takes the median components of its frames
(:meth:`~runtime.scoring.StreamScorer.rebaseline`): the new scene scores as normal at once instead of
alarming until slow forgetting catches up, which it never would (frames over the threshold are not learned).
A model with conditioning is not re-baselined: level matching already took the change out of its errors.

The first frame of each new group of pictures of a coded stream (a keyframe after predicted frames) does
not enter the score: at a low bitrate the codec's artefacts change all at once there, and the frame's
prediction and flow errors jump with them (H.264 at CRF 42, one keyframe a second: frame and flow errors
2-4x their neighbours' at every keyframe, 4.75 % of Ped2's normal frames over the threshold, nearly all in
the smoothing window after one). Its score is the window's as it stands
(:func:`~runtime.scoring.gop_starts`) and nothing is learned from it; the next frame, predicted
from it, is scored as usual, so an anomaly that starts there is late by one frame. Image folders and
all-keyframe streams (MJPEG) have no such frame.

A fresh stream whose first frames are heavily coded (their median :func:`~runtime.conditioning.blockiness`
at least the model's ``coded_start.min_blockiness``: a low-bitrate sub-stream) starts its running statistics
from the model's ``coded_start``, those of its training footage coded that way, instead of the clean
footage's: the coded picture raises every error, and from the clean statistics an upload of a coded clip
alarmed at its start before the stream had learned its picture (``ped2`` at CRF 42, README "Robustness").
The choice is made once, from the frames of the first window, before the first score; a stream resumed
from a camera's own statistics keeps them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future

import numpy as np

from .camera_watch import SCENE_CHANGE, CameraWatch, WatchVerdict
from .conditioning import Conditioner, blockiness, colourfulness, uncovered
from .engine import InferenceEngine
from .events import EventConfig, EventTracker
from .exported_model import ExportedModel
from .masks import check_polygons, mask_image
from .preprocess import to_model_frame
from .scoring import DEFAULT_FORGET, RunningStats, StreamScorer
from .types import LIVE, WARMING_UP, EngineOutput, Frame, FrameCondition, FrameResult, Observer

MIN_REBASELINE_FRAMES = 5  # fewer scored frames in a scene change than this: the running mean stays


class Stream:
    """``model``: one of the engine's loaded models (default its default model); ``threshold`` None = the
    model's; ``stats``: running statistics to resume from (else the model's training statistics);
    ``keep_events``: how many past events ``events.events`` keeps."""

    def __init__(self, engine: InferenceEngine, *, model: ExportedModel | None = None, masks: list | None = None,
                 threshold: float | None = None, forget: float = DEFAULT_FORGET, events: EventConfig | None = None,
                 stats: RunningStats | None = None, observer: Observer | None = None,
                 keep_events: int = 100, max_inflight: int | None = None) -> None:
        self.engine, self.model, self.observer = engine, model or engine.model, observer
        meta = self.model.meta
        self.scorer = StreamScorer.from_metadata(meta, threshold=meta.threshold if threshold is None else threshold,
                                                 forget=forget, stats=stats)
        config = events or EventConfig()
        self.events = EventTracker.from_config(self.scorer.threshold, config, keep=keep_events)
        self.state = WARMING_UP
        self.conditioner = Conditioner(meta.conditioning, meta.height, meta.width)
        spec = meta.conditioning
        self.watch = CameraWatch(config.camera_watch, keep=keep_events, max_shift_px=(
            None if spec is None else spec.max_shift * min(meta.height, meta.width)),
            min_sharpness=None if spec is None else spec.min_sharpness)
        self._changed: list[np.ndarray] = []  # components of the frames of a scene change (model thread)
        self._lane = engine.open_lane(self, self.model)
        self.set_masks(masks or [])
        self._last: tuple[int, int] | None = None  # (segment, frame_id) of the previous submitted frame
        self._predicted = False  # the previous scored-for frame was predicted from others (model thread)
        self._slots = threading.BoundedSemaphore(max_inflight or engine.config.max_inflight)
        # the first window's blockiness, while the start is still to be chosen (None: chosen, or nothing to choose)
        self._blocks: list[float] | None = [] if meta.coded_start is not None and stats is None else None

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    def set_masks(self, polygons: list) -> None:
        """Masked regions (polygons in 0-1 frame coordinates) for the next frames; [] = none."""
        m = self.model.meta
        mask = mask_image(check_polygons(polygons), m.height, m.width)
        if mask is not None and not self.model.takes_mask:
            raise ValueError(f"model {self.model.path.name} was exported before masks; re-export it with "
                             f"`amvad export --onnx {self.model.path} --out NEW.onnx`")
        self._lane.mask = None if mask is None else self.engine.to_device(mask)

    def set_threshold(self, threshold: float) -> None:
        """A new threshold for the next frames (scores, running statistics and events alike)."""
        self.scorer.threshold = threshold
        self.events.set_threshold(threshold)

    def submit(self, frame: Frame) -> Future:
        """Preprocess ``frame`` and queue it; blocks while ``max_inflight`` frames are in the engine.
        The future's result is the frame's :class:`FrameResult` (or the error that broke its batch)."""
        restart = self._last is not None and (frame.segment, frame.frame_id) != (self._last[0], self._last[1] + 1)
        blocks = self._blocks  # set to None by the model thread once the start is chosen
        if blocks is not None and len(blocks) < self.model.meta.clip_len:
            blocks.append(blockiness(frame.pixels))
        self._last = (frame.segment, frame.frame_id)
        m = self.model.meta
        # "decode" stage: PyAV's decode in the ingest thread (frame.decode_s) plus the conversion to the
        # model input (resize, grey, level matching, stabilisation) here, observed once per frame
        t0 = time.perf_counter()
        x, condition = self.conditioner(to_model_frame(frame.pixels, height=m.height, width=m.width,
                                                       channels=m.channels), colour=colourfulness(frame.pixels))
        valid = (uncovered(-condition.shift[0], -condition.shift[1], m.height, m.width)
                 if condition.compensated and self.model.takes_mask else None)
        x = self.engine.to_device(x)
        if self.observer:
            self.observer.observe("decode", frame.decode_s + time.perf_counter() - t0)
        verdict = self.watch.update(frame.timestamp, frame.frame_id, condition)
        future: Future = Future()
        self._slots.acquire()
        try:
            self.engine.submit(self._lane, x, restart=restart or verdict.restart,
                               ticket=(frame, future, condition, verdict),
                               valid=None if valid is None else self.engine.to_device(valid))
        except BaseException:
            self._slots.release()
            raise
        return future

    def process(self, frame: Frame) -> FrameResult:
        """Score one frame and wait for it (no overlap between frames; see :func:`results_in_order`)."""
        return self.submit(frame).result()

    def engine_done(self, ticket: tuple[Frame, Future, FrameCondition, WatchVerdict], out: EngineOutput) -> None:
        """The engine's output for one frame (in frame order): score, update events, resolve the future."""
        frame, future, condition, verdict = ticket
        self._slots.release()
        if self.observer:
            self.observer.observe_latency(out.latency_s)
        if out.error is not None:
            future.set_exception(out.error)
            return
        try:
            result = self._score(frame, out, condition, verdict)
        except Exception as exc:
            future.set_exception(exc)
            return
        future.set_result(result)

    def _score(self, frame: Frame, out: EngineOutput, condition: FrameCondition, verdict: WatchVerdict) -> FrameResult:
        new_gop, self._predicted = frame.keyframe and self._predicted, not frame.keyframe  # as gop_starts
        if out.restarted:
            self.scorer.reset_window()
        camera = {"condition": condition, "camera_event": verdict.change, "camera_event_record": verdict.event}
        if verdict.rebaseline:
            # a model with level matching saw the light change taken out already: its errors did not move
            # with it, and re-baselining on the changed frames would only learn whatever they showed
            # (measured, lights x1.35 on Ped2: causal AUC 0.92 kept without it, 0.68 with it)
            if self.model.meta.conditioning is None and len(self._changed) >= MIN_REBASELINE_FRAMES:
                self.scorer.rebaseline(np.stack(self._changed))
            self._changed = []
        if verdict.hold:
            return self._held(frame, out, verdict, camera)
        if out.components is None:
            self.state = WARMING_UP
            return FrameResult(frame.frame_id, frame.timestamp, None, False, WARMING_UP, None, None, None, **camera)
        self.state = LIVE
        if self._blocks is not None:
            self._choose_start()
        t0 = time.perf_counter()
        components = out.components.astype(np.float64)
        score = self.scorer.update(components, carried=new_gop)
        settled = self.scorer.settled
        event = self.events.update(frame.timestamp, frame.frame_id, score if settled else None)
        if self.observer:
            for stage, seconds in out.stage_s.items():
                self.observer.observe(stage, seconds)
            self.observer.observe("score", time.perf_counter() - t0)
        return FrameResult(frame.frame_id, frame.timestamp, score, bool(score >= self.scorer.threshold), LIVE,
                           components, out.heatmap, event, self.events.snapshot(event), **camera, settled=settled)

    def _choose_start(self) -> None:
        """Before the first score: a heavily coded picture starts from the coded footage's statistics."""
        coded, blocks, self._blocks = self.model.meta.coded_start, self._blocks, None
        if blocks and float(np.median(blocks)) >= coded.min_blockiness:
            self.scorer.stats = RunningStats(mean=np.asarray(coded.mean, np.float64),
                                             var=np.square(np.asarray(coded.std, np.float64)))

    def _held(self, frame: Frame, out: EngineOutput, verdict: WatchVerdict, camera: dict) -> FrameResult:
        """A frame the camera watch holds: not scored, an open anomaly event ends at it; the components of
        a scene change's frames are kept for the re-baseline when it settles."""
        self.state = WARMING_UP if out.components is None else LIVE
        if out.components is not None and verdict.event is not None and verdict.event.type == SCENE_CHANGE:
            self._changed.append(out.components.astype(np.float64))
        elif verdict.event is None or verdict.event.type != SCENE_CHANGE:
            self._changed = []
        event = self.events.hold(frame.timestamp, frame.frame_id)
        return FrameResult(frame.frame_id, frame.timestamp, None, False, self.state, None, None, event,
                           self.events.snapshot(event), held=True, **camera)


def results_in_order(stream: Stream, frames: Iterable[Frame]) -> Iterator[tuple[Frame, FrameResult]]:
    """Feed ``frames`` as fast as the stream admits them (flow of frame t+1 overlaps the model of frame
    t) and yield each frame with its result, in order. For files; a live camera publishes from its own
    thread instead, so no result waits for the next frame to arrive."""
    pending: deque[tuple[Frame, Future]] = deque()
    for frame in frames:
        pending.append((frame, stream.submit(frame)))
        while pending and pending[0][1].done():
            f, fut = pending.popleft()
            yield f, fut.result()
    while pending:
        f, fut = pending.popleft()
        yield f, fut.result()
