"""Records and protocols that several layers share. This module imports nothing of ours, so the decoder,
the inference engine, a stream and the service can all name these types without importing each other
(the way Starlette's ``types.py`` breaks its circles)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

WARMING_UP, LIVE = "warming_up", "live"


@dataclass(frozen=True)
class Frame:
    """One decoded frame: RGB uint8 (H, W, 3); ``timestamp`` in seconds (stream time or wall clock);
    ``segment`` changes whenever the source was (re)opened; ``decode_s``: seconds spent decoding it;
    ``keyframe``: coded on its own (an H.264 IDR picture, any frame of an image folder or MJPEG), False for
    a frame predicted from others."""
    source_id: str
    frame_id: int
    segment: int
    timestamp: float
    pixels: np.ndarray
    decode_s: float = 0.0
    keyframe: bool = True


@dataclass
class AnomalyEvent:
    """One anomaly event of a stream; ``end`` is None while it is open. Times are capture seconds."""
    id: int
    start: float
    start_frame: int
    peak_score: float
    peak_frame: int
    end: float | None = None
    end_frame: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CameraEvent:
    """One camera event of a stream (``runtime.camera_watch``): ``type`` ``tamper`` (``reason`` covered,
    blinded, defocused, noisy, moved) or ``scene_change`` (lighting, contrast); never an anomaly. ``detail``: what
    was measured when it began, beside the camera's baseline. ``end`` is None while it is open."""
    id: int
    type: str
    reason: str
    start: float
    start_frame: int
    end: float | None = None
    end_frame: int | None = None
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FrameCondition:
    """What one frame says about the camera rather than the scene (``runtime.conditioning``). Without the
    model's conditioning only the level is measured (the rest None)."""
    brightness: float                          # mean grey level as the frame came (0-1)
    contrast: float                            # std of the frame shrunk 8x (gain moves it, blur/noise not)
    sharpness: float | None = None             # Laplacian energy against the fitted view's (1 = as fitted)
    shift: tuple[float, float] | None = None   # (dx, dy) of the view against the fitted one, model pixels
    alignment: float | None = None             # phase-correlation peak (0-1): how much it looks like that view
    compensated: bool = False                  # the shift was undone
    colour: float | None = None                # mean chroma of the source frame (0-1; ~0: grey or infrared)
    noise: float | None = None                 # sensor noise after level matching / the footage's (1 = as fitted)


@dataclass(frozen=True)
class FrameResult:
    """What one frame produced; ``heatmap`` (h, w) at model resolution; score, components and heatmap
    are None while the stream warms up (fewer than ``clip_len`` consecutive frames)."""
    frame_id: int
    timestamp: float
    score: float | None
    anomaly: bool
    state: str
    components: np.ndarray | None
    heatmap: np.ndarray | None
    event: str | None  # "start" / "end" when an anomaly event changed on this frame
    # a copy of the event this frame belongs to (open, or ended on this frame), taken when the frame was
    # scored: whoever publishes the result later reads it here, never the stream's tracker
    event_record: AnomalyEvent | None = None
    condition: FrameCondition | None = None  # the camera's side of this frame (level, sharpness, shift)
    # a camera event (tamper, scene change) "start"ed or "end"ed on this frame, and a copy of the open one
    # (or the one that just ended); ``held``: the frame was not scored because of it (score None)
    camera_event: str | None = None
    camera_event_record: CameraEvent | None = None
    held: bool = False
    # the score is over a full window (StreamScorer.settled): before that (a stream's first frames, after a
    # gap) it is reported and flagged but starts no event
    settled: bool = False


@dataclass(frozen=True)
class EngineOutput:
    """What the inference engine hands a stream for one submitted frame, exactly once.

    ``components`` (K,) and ``heatmap`` (h, w) are None while the window is not full (and on error);
    ``restarted``: the engine started a new window with this frame (the stream asked for it, or an earlier
    frame of the stream failed); ``error``: the exception that broke this frame's batch, if any."""
    components: np.ndarray | None
    heatmap: np.ndarray | None
    restarted: bool
    error: BaseException | None = None
    stage_s: dict[str, float] = field(default_factory=dict)  # seconds each engine stage took
    latency_s: float = 0.0                                   # submit -> output


class StreamSink(Protocol):
    """How the engine knows a stream: one call per submitted frame, in submission order, from the engine's
    model thread. ``ticket`` is whatever the stream passed to ``submit`` for that frame."""

    def engine_done(self, ticket: Any, out: EngineOutput) -> None: ...


class Observer(Protocol):
    """Where the engine and streams report timings (the service's Prometheus metrics implement it)."""

    def observe(self, stage: str, seconds: float) -> None: ...

    def observe_batch(self, stage: str, seconds: float, size: int) -> None: ...

    def observe_latency(self, seconds: float) -> None: ...
