"""Frames from any source (uploaded file, path, ``file://``, RTSP, HTTP) through one PyAV decoder, for
training, evaluation, uploads and cameras alike.

A frame travels as a frozen :class:`~runtime.types.Frame`; ``segment`` changes whenever the source was
(re)opened, so consumers can restart temporal windows after a reconnect.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import av
import numpy as np

from .errors import Invalid
from .redact import redact
from .types import Frame

# Footage on disk: video files, or folders of frame images (one folder = one clip). Frame folders carry no
# timing; their frames are stamped at FRAME_FOLDER_FPS (UCSD Ped2 was filmed at 10 fps).
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}
FRAME_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
FRAME_FOLDER_FPS = 10.0


class DecodeError(Invalid):
    """A source that is not a readable video (names the source and what went wrong); ``reason`` is
    FFmpeg's own words without any path, for messages that must not show ours."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's message for ``exc`` without the errno and file name PyAV adds."""
    return getattr(exc, "strerror", None) or type(exc).__name__


def is_file_source(url: str) -> bool:
    return "://" not in url or url.lower().startswith("file://")


def file_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path)) if url.lower().startswith("file://") else Path(url)


def open_source(url: str, *, open_timeout: float = 5.0, read_timeout: float = 5.0) -> av.container.InputContainer:
    """Open a video source with short probing; RTSP over TCP; read timeouts so a frozen server fails."""
    options = {"analyzeduration": "1000000", "probesize": "500000"}
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("rtsp", "rtsps"):
        options.update(rtsp_transport="tcp", timeout=str(int(read_timeout * 1e6)))
    target = str(file_path(url)) if is_file_source(url) else url
    if is_file_source(url) and not Path(target).is_file():
        raise DecodeError(f"{target}: no such file")
    try:
        container = av.open(target, options=options, timeout=(open_timeout, read_timeout))
    except (av.error.FFmpegError, OSError) as exc:
        raise DecodeError(redact(f"cannot open {url}: {exc}"), ffmpeg_reason(exc)) from None
    if not container.streams.video:
        container.close()
        raise DecodeError(redact(f"{url}: no video stream"), "no video stream")
    return container


def stream_fps(container: av.container.InputContainer, default: float = 25.0) -> float:
    """The stream's frame rate, or ``default`` when the container does not say."""
    rate = container.streams.video[0].average_rate or container.streams.video[0].guessed_rate
    return float(rate) if rate else default


def upright(pixels: np.ndarray, rotation: float) -> np.ndarray:
    """The picture as it is meant to be seen: ``rotation`` is the stream's display rotation (degrees
    counterclockwise, PyAV's ``VideoFrame.rotation``, e.g. -90 for a phone filmed upright)."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns)) if quarter_turns else pixels


def iter_frames(container: av.container.InputContainer, *, source_id: str, segment: int = 0,
                first_id: int = 0, wall_clock: bool = False) -> Iterator[Frame]:
    """Decode every frame in order; errors become :class:`DecodeError` with credentials redacted.

    Only decoding and RGB conversion are timed (``Frame.decode_s``), not the wait for the next packet of a
    live stream; the time of packets that yield no frame yet (frame threading) goes to the next frame.
    """
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    fid, pending = first_id, 0.0
    try:
        for packet in container.demux(stream):  # ends with an empty packet that flushes the decoder
            t0 = time.perf_counter()
            decoded = packet.decode()
            pending += time.perf_counter() - t0
            for vf in decoded:
                t0 = time.perf_counter()
                pixels = upright(vf.to_ndarray(format="rgb24"), vf.rotation)
                spent, pending = pending + time.perf_counter() - t0, 0.0
                ts = time.time() if wall_clock else float(vf.time if vf.time is not None else fid - first_id)
                yield Frame(source_id, fid, segment, ts, pixels, spent, keyframe=bool(vf.key_frame))
                fid += 1
    except av.error.FFmpegError as exc:
        raise DecodeError(redact(f"{source_id}: decode failed after {fid - first_id} frames: {exc}")) from None
