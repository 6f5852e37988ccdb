"""Video decoding with PyAV, shared by training (video-file datasets), evaluation and the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np


class DecodeError(ValueError):
    """A file that is not a readable video (names the file and what went wrong)."""


def iter_video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Yield every decodable frame of a video file as RGB uint8 (H, W, 3), in order."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise DecodeError(f"{path}: cannot open as video: {exc}") from None
    with container:
        if not container.streams.video:
            raise DecodeError(f"{path}: no video stream")
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{path}: decode failed: {exc}") from None
