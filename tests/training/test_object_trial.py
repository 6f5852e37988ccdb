"""The object-centric trial's parts: motion regions from flow, the cubes cut around them, and frame
components as the worst region's."""

from __future__ import annotations

import numpy as np

from amvad.training.object_trial import Regions, cut, frame_components, motion_boxes, region_windows

H, W = 64, 96


def flows_with(blobs: list[tuple[int, int, int, float]], n: int = 2) -> np.ndarray:
    """(n, 2, H, W) flows, still but for square blobs (x, y, side, speed) moving right."""
    flows = np.zeros((n, 2, H, W), np.float32)
    for x, y, side, speed in blobs:
        flows[:, 0, y:y + side, x:x + side] = speed
    return flows


def test_one_square_box_per_moving_region_inside_the_frame():
    r = Regions(min_side=16, margin=2)
    boxes = motion_boxes(flows_with([(10, 20, 6, 1.0), (60, 50, 14, 2.0), (40, 5, 3, 5.0)]), r)
    # the 3x3 blob is under min_area (20 px); the 14x14 one at the bottom edge is pushed inside
    assert len(boxes) == 2
    (x0, y0, s0), (x1, y1, s1) = sorted(boxes)
    assert s0 == 16 and x0 <= 10 and x0 + s0 >= 16 and y0 <= 20 and y0 + s0 >= 26
    assert s1 == 18 and y1 + s1 == H and x1 <= 60 and x1 + s1 >= 74


def test_slow_motion_and_stillness_give_no_region():
    r = Regions()
    assert motion_boxes(flows_with([(10, 20, 8, r.threshold / 2)]), r) == []
    assert motion_boxes(np.zeros((2, 2, H, W), np.float32), r) == []


def test_cube_is_resized_but_flow_stays_in_frame_pixels():
    frames = np.random.default_rng(0).random((3, 1, H, W)).astype(np.float32)
    flows = flows_with([(0, 0, 48, 1.5)])
    f, o = cut(frames, flows, (0, 0, 48), 32)
    assert f.shape == (3, 1, 32, 32) and o.shape == (2, 2, 32, 32)
    np.testing.assert_allclose(o[:, 0], 1.5, atol=1e-6)  # not rescaled by 32/48
    np.testing.assert_allclose(f.mean(), frames[:, :, :48, :48].mean(), atol=0.01)


def test_every_region_of_every_scored_frame_becomes_a_window():
    frames = np.zeros((6, 1, H, W), np.float32)
    flows = np.concatenate([np.zeros((3, 2, H, W), np.float32), flows_with([(10, 10, 8, 1.0), (60, 40, 8, 1.0)])])
    cubes, ids = region_windows(frames, flows, clip_len=3, stride=1, r=Regions(min_side=16))
    # windows end at frames 2..5; motion from flow 3 on (the flow into frame 4): frames 4 and 5, two each
    assert ids == [4, 4, 5, 5]
    assert cubes[0][0].shape == (3, 1, 32, 32) and cubes[0][1].shape == (2, 2, 32, 32)


def test_frame_components_are_the_worst_region_or_the_floor():
    comps = np.array([[1.0, 5.0], [3.0, 2.0], [0.5, 0.5]])
    out = frame_components(comps, [4, 4, 6], range(4, 7), floor=np.array([0.1, 0.2]))
    np.testing.assert_array_equal(out, [[3.0, 5.0], [0.1, 0.2], [0.5, 0.5]])
