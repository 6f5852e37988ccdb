"""The runtime's motion-speed component (runtime/motion_speed.py): what the engine computes frame by frame is
what a whole clip reads, on the frames as the model takes them; the graph's own components stay as they
were; a masked region's motion does not count; the metadata keeps the component last and within the window."""

from __future__ import annotations

import numpy as np
import pytest

from amvad.models.flow import build_flow
from amvad.models.metadata import SPEED_COMPONENT, ModelMetadata, MotionSpeed
from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.exported_model import read_metadata
from amvad.runtime.motion_speed import clip_speed
from amvad.runtime.stream import Stream, results_in_order
from amvad.runtime.types import Frame
from amvad.training.export import rewrite_metadata
from amvad.training.motion_reference import model_inputs
from tests.support.synthetic import render_clip

CPU = EngineConfig(device="cpu", flow_threads=1, model_threads=1)


def with_speed(model, out, spec: MotionSpeed | None = None):
    """``model`` with the speed component added (placeholder statistics: these tests read raw components)."""
    meta = read_metadata(model)
    components = [*[c.model_dump() for c in meta.components],
                  {"name": SPEED_COMPONENT, "weight": 1.0, "mean": 0.5, "std": 0.2}]
    rewrite_metadata(model, out, speed=spec or MotionSpeed(), components=components)
    return out


def clip(fast_from: int = 8, n: int = 20) -> list[Frame]:
    return [Frame("c", i, 0, i / 10, np.repeat(p[..., None], 3, axis=2))
            for i, p in enumerate(render_clip(n, speed=1.0, seed=3, fast_from=fast_from))]


def scored(model, frames: list[Frame], masks: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frame ids, components) of the frames the engine scored."""
    engine = InferenceEngine(model, CPU)
    try:
        rows = [(f.frame_id, r.components) for f, r in results_in_order(Stream(engine, masks=masks), frames)
                if r.components is not None]
    finally:
        engine.close()
    return np.array([i for i, _ in rows]), np.stack([c for _, c in rows])


def test_the_engine_reads_the_speed_a_whole_clip_reads_and_leaves_the_graphs_components(tiny_model, tmp_path):
    model = with_speed(tiny_model, tmp_path / "speed.onnx", MotionSpeed(gap=2, window=4, patch=8))
    meta = read_metadata(model)
    frames = clip()
    ids, comps = scored(model, frames)
    plain_ids, plain = scored(tiny_model, frames)
    assert comps.shape == (len(plain), len(plain[0]) + 1)
    np.testing.assert_array_equal(ids, plain_ids)
    np.testing.assert_allclose(comps[:, :-1], plain, rtol=1e-6)  # the graph's own, untouched
    want = clip_speed(model_inputs(frames, meta.height, meta.width, meta.channels, meta.conditioning),
                      build_flow(**meta.flow), meta.speed)
    np.testing.assert_allclose(comps[:, -1], want[ids], rtol=1e-4, atol=1e-5)


def test_motion_under_a_mask_does_not_count(tiny_model, tmp_path):
    model = with_speed(tiny_model, tmp_path / "speed.onnx", MotionSpeed(gap=2, window=2, patch=8))
    frames = clip(fast_from=4)
    band = [[(0.0, 0.55), (1.0, 0.55), (1.0, 0.9), (0.0, 0.9)]]  # the rows the fast square crosses
    ids, open_ = scored(model, frames)
    masked_ids, masked = scored(model, frames, masks=band)
    np.testing.assert_array_equal(ids, masked_ids)
    assert masked[:, -1].mean() < 0.5 * open_[:, -1].mean()  # measured: 0.11 against 0.38


@pytest.mark.parametrize("change, problem", [
    ({"speed": None}, "listed but speed is not set"),
    ({"components": "speed first"}, "must be the last component"),
    ({"speed": {"gap": 4}}, "shorter than the window"),
    ({"speed": {"patch": 64}}, "larger than the input"),
])
def test_the_metadata_keeps_the_speed_last_and_within_the_window(tiny_model, tmp_path, change, problem):
    meta = read_metadata(with_speed(tiny_model, tmp_path / "speed.onnx")).model_dump()
    if change.get("components") == "speed first":
        change = {"components": meta["components"][-1:] + meta["components"][:-1]}
    with pytest.raises(ValueError, match=problem):
        ModelMetadata.model_validate({**meta, **change})
