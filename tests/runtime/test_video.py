"""The one decoder: frames come out as they are meant to be seen (display rotation honoured), say whether
they were coded on their own (a real RTSP camera's keyframes), and errors carry FFmpeg's reason without
paths."""

from __future__ import annotations

import itertools

import av
import numpy as np
import pytest

from amvad.runtime.video import DecodeError, iter_frames, open_source


def write_marked_clip(path, rotation: int | None) -> None:
    """64x32 frames with a white block in the stored picture's top-left corner; ``rotation`` sets the
    display matrix (degrees counterclockwise, as phones write it: -90 = shot upright)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for _ in range(4):
            img = np.zeros((32, 64, 3), np.uint8)
            img[:8, :8] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())


def corner_brightness(pixels: np.ndarray) -> dict[str, float]:
    h, w = pixels.shape[:2]
    return {"top-left": pixels[:6, :6].mean(), "top-right": pixels[:6, w - 6:].mean(),
            "bottom-left": pixels[h - 6:, :6].mean(), "bottom-right": pixels[h - 6:, w - 6:].mean()}


@pytest.mark.parametrize("rotation, shape, corner", [(None, (32, 64), "top-left"), (-90, (64, 32), "top-right"),
                                                     (90, (64, 32), "bottom-left"), (180, (32, 64), "bottom-right")])
def test_frames_are_rotated_upright_as_the_stream_says(tmp_path, rotation, shape, corner):
    path = tmp_path / "clip.mp4"
    write_marked_clip(path, rotation)
    with open_source(str(path)) as container:
        frames = list(iter_frames(container, source_id="clip"))
    assert len(frames) == 4 and frames[0].pixels.shape == (*shape, 3)
    brightness = corner_brightness(frames[0].pixels)
    assert max(brightness, key=brightness.get) == corner, brightness


def test_unreadable_source_error_has_a_reason_without_the_path(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DecodeError) as err:
        open_source(str(path))
    assert str(tmp_path) not in err.value.reason and "Errno" not in err.value.reason


def test_a_real_rtsp_camera_says_which_frames_are_keyframes(rtsp_server):
    # given GStreamer's RTSP server sending H.264 with a keyframe at most every 10 frames (1 s at 10/s)
    with open_source(rtsp_server.url) as container:
        frames = []
        for f in iter_frames(container, source_id="cam", wall_clock=True):
            frames.append(f)
            if len(frames) == 35:
                break
    # then the decoder's flag comes with each frame: a few keyframes, the frames between them predicted
    keys = [i for i, f in enumerate(frames) if f.keyframe]
    assert 3 <= len(keys) <= 6, keys
    assert max(b - a for a, b in itertools.pairwise(keys)) <= 10, keys
