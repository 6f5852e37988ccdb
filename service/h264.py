"""The one H.264 writer of the service: recording segments and event clips both go through it.

It writes fragmented MP4 (an empty ``moov`` up front, then one ``moof``+``mdat`` per keyframe, flushed to
the OS at once), so a file cut off by ``kill -9`` or a full disk still plays up to its last complete
fragment instead of failing with "moov atom not found". Presentation times come from the frames' capture
timestamps (milliseconds), so a clip plays at the real speed whatever the frame rate was.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from amvad.runtime.errors import Invalid

log = logging.getLogger("amvad.h264")
TIME_BASE = Fraction(1, 1000)  # pts in milliseconds of capture time
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof",
                  "flush_packets": "1"}  # each fragment reaches the file (the OS) as soon as it is complete


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library: nothing to do)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Give the pages an encoder freed back to the OS. glibc keeps what a thread frees in that thread's
    arena for later, and the encoders of clips that overlap (different threads, many arenas) free their
    buffers at different times, so without this a soak's RSS went up in steps at each new peak of clips
    open at once and never came down (measured: 8 clips closed, 125 MB freed, 0 returned)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class H264Writer:
    """One MP4 file of H.264 frames. ``write(timestamp_s, pixels)`` with RGB uint8 (H, W, 3) pixels; the
    file is opened on the first frame, whose size (cropped to even) every later frame is scaled to.
    ``close()`` flushes the encoder; it is safe to call twice, after an error, or with no frame written.
    Errors from the disk or the encoder propagate (an ``OSError`` for a full or read-only disk); the
    fragments already written stay playable.

    ``threads`` (0: libx264's own choice, 1.5 per core plus lookahead threads) and ``tune`` (e.g.
    ``zerolatency``: no lookahead, no B-frames) set the encoder's footprint: see ``evidence.CLIP_ENCODER``."""

    def __init__(self, path: str | Path, *, crf: int = 23, preset: str = "veryfast",
                 keyframe_s: float = 1.0, threads: int = 0, tune: str | None = None) -> None:
        self.path = Path(path)
        self.crf, self.preset, self.keyframe_s = crf, preset, keyframe_s
        self.threads, self.tune = threads, tune
        self.frames = 0
        self.first_ts: float | None = None  # capture time of the first frame (pts 0)
        self.last_ts: float | None = None
        self._out = self._stream = None
        self._last_pts = -1
        self._last_key_ts: float | None = None
        self._closed = False

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the video, None before the first frame."""
        return None if self._stream is None else (self._stream.width, self._stream.height)

    @property
    def duration_s(self) -> float:
        """Capture time from the first frame written to the last."""
        return 0.0 if self.first_ts is None else self.last_ts - self.first_ts

    def write(self, timestamp_s: float, pixels: np.ndarray) -> None:
        if self._closed:
            raise Invalid(f"{self.path.name}: write after close")
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise Invalid(f"{self.path.name}: expected RGB uint8 pixels (H, W, 3), got {pixels.dtype} "
                          f"{pixels.shape}")
        if pixels.shape[0] < 2 or pixels.shape[1] < 2:
            raise Invalid(f"{self.path.name}: a frame of {pixels.shape[1]}x{pixels.shape[0]} is too small")
        try:
            if self._out is None:
                self._open(pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2)
                self.first_ts = timestamp_s
            self._encode(timestamp_s, pixels)
        except BaseException:
            self._abandon()
            raise
        self.frames += 1
        self.last_ts = timestamp_s if self.last_ts is None else max(self.last_ts, timestamp_s)

    def _open(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        out = av.open(str(self.path), "w", format="mp4", options=dict(FRAGMENTED_MP4))
        try:
            stream = out.add_stream("libx264", rate=30)  # a nominal rate: the pts carry the real timing
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.time_base = TIME_BASE
            stream.codec_context.time_base = TIME_BASE
            stream.options = {"preset": self.preset, "crf": str(self.crf),
                              **({"tune": self.tune} if self.tune else {})}
            if self.threads:
                stream.codec_context.thread_count = self.threads
        except BaseException:
            out.close()
            raise
        self._out, self._stream = out, stream

    def _encode(self, timestamp_s: float, pixels: np.ndarray) -> None:
        width, height = self.size
        if pixels.shape[0] >= height and pixels.shape[1] >= width:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[:height, :width]), format="rgb24")
        else:  # the source changed resolution mid-file: scale to the file's size
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24").reformat(width, height)
        # strictly increasing even when capture times repeat or step back (a reconnect)
        self._last_pts = max(round((timestamp_s - self.first_ts) * 1000), self._last_pts + 1)
        frame.pts, frame.time_base = self._last_pts, TIME_BASE
        if self._last_key_ts is None or timestamp_s - self._last_key_ts >= self.keyframe_s:
            frame.pict_type = av.video.frame.PictureType.I  # a keyframe starts a new fragment
            self._last_key_ts = timestamp_s
        for packet in self._stream.encode(frame):
            self._out.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finish the file. After a failure here the file keeps its complete
        fragments; the error propagates once, a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._out is None:
            return
        out, stream, self._out, self._stream = self._out, self._stream, None, None
        try:
            for packet in stream.encode(None):
                out.mux(packet)
        finally:
            out.close()
            del out, stream
            release_freed_memory()

    def _abandon(self) -> None:
        """After an error: release the file without flushing more into it (its fragments stay)."""
        self._closed = True
        out, self._out, self._stream = self._out, None, None
        if out is not None:
            try:
                out.close()
            except Exception as exc:  # the first error is the one that matters; this one is only logged
                log.debug("closing %s after an error also failed: %s", self.path, exc)
            del out
            release_freed_memory()

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the caller's error propagates; the file is still finished as well as it can be
            self.close()
        except Exception as close_exc:
            log.warning("closing %s after an error also failed: %s", self.path, close_exc)


@dataclass(frozen=True)
class Playable:
    """What of a video file decodes: ``frames`` and the span of their presentation times in seconds."""
    frames: int
    span_s: float


def probe(path: str | Path) -> Playable:
    """Decode ``path`` and count its frames; a damaged tail (a file cut mid-fragment) ends the count. A
    file that cannot be opened or holds no decodable frame is ``Playable(0, 0.0)``; never raises."""
    frames, first, last = 0, None, None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            try:
                for frame in container.decode(stream):
                    frames += 1
                    if frame.time is not None:
                        first = frame.time if first is None else min(first, frame.time)
                        last = frame.time if last is None else max(last, frame.time)
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                log.info("%s: decoding stops after %d frames (%s)", path, frames, exc)
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        log.info("%s is not playable: %s", path, exc)
        return Playable(0, 0.0)
    return Playable(frames, 0.0 if first is None else last - first)


def playable_frames(path: str | Path) -> int:
    """How many frames of ``path`` decode (0 when none or the file cannot be read); for start-up repair."""
    return probe(path).frames
