"""The bundled exported models through ONNX Runtime: metadata, shapes, errors, and each one flagging the
sample's cyclist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.registry import bundled_models, resolve_model
from runtime.engine import InferenceEngine
from runtime.exported_model import ExportedModel
from runtime.stream import Stream, results_in_order
from runtime.video import iter_frames, open_source
from runtime.windows import scored_frames


@pytest.fixture(scope="module")
def ped2_model() -> ExportedModel:
    return ExportedModel("ped2")


def test_bundled_model_describes_itself(ped2_model):
    meta = ped2_model.meta
    assert "ped2" in bundled_models()
    assert resolve_model("ped2").stat().st_size < 20 * 2 ** 20
    assert meta.input_names == ("frames", "flows", "mask") and meta.output_names == ("components", "heatmap", "prediction")
    assert ped2_model.takes_mask  # re-exported under the contract with masks
    assert meta.flow["name"] == "tvl1" and len(meta.components) >= 2
    assert all(c.std > 0 for c in meta.components) and meta.threshold > 0


def test_bundled_model_scores_a_window(ped2_model):
    t, c, h, w = ped2_model.frame_shape
    frames = np.random.default_rng(0).random((2, t, c, h, w), dtype=np.float32)
    flows = np.stack([ped2_model.compute_flows(f) for f in frames])
    out = ped2_model.run(frames, flows)
    assert out.components.shape == (2, len(ped2_model.meta.components)) and np.isfinite(out.components).all()
    assert out.heatmap.shape == (2, 1, h, w) and out.prediction.shape == (2, c, h, w)


def test_wrong_shaped_inputs_are_rejected(ped2_model):
    t, c, h, w = ped2_model.frame_shape
    with pytest.raises(ValueError, match="frames must have shape"):
        ped2_model.run(np.zeros((1, t, c, h + 8, w), np.float32), np.zeros((1, t - 1, 2, h, w), np.float32))
    with pytest.raises(ValueError, match="flows must have shape"):
        ped2_model.run(np.zeros((1, t, c, h, w), np.float32), np.zeros((1, t, 2, h, w), np.float32))
    with pytest.raises(ValueError, match="fewer than the clip length"):
        scored_frames(t - 1, t)


def test_unknown_model_name():
    with pytest.raises(FileNotFoundError, match="neither a file nor a bundled model"):
        ExportedModel("no-such-model")


@pytest.mark.parametrize("name, method", [("ped2", "comemory"), ("ped2-ammc", "ammc"), ("ped2-amsrc", "amsrc")])
def test_every_bundled_model_flags_the_samples_cyclist(name, method):
    """Each shipped method, through the engine and a stream as the service runs it, on the bundled
    sample (Ped2 test clip 01: a cyclist enters at frame 61): quiet before, above its threshold after."""
    assert resolve_model(name).stat().st_size < 5 * 2 ** 20
    engine = InferenceEngine(name)
    try:
        assert engine.meta.method == method and engine.meta.threshold > 0
        sample = Path(__file__).parents[2] / "service" / "samples" / "ped2_test01.mp4"
        with open_source(str(sample)) as container:
            results = [r for _, r in results_in_order(Stream(engine), iter_frames(container, source_id="s"))]
    finally:
        engine.close()
    scores = {r.frame_id: r.score for r in results if r.score is not None}
    before = [s for i, s in scores.items() if i < 55]
    after = [s for i, s in scores.items() if i >= 70]
    assert max(after) > engine.meta.threshold and np.median(after) > np.median(before) + 1.0
    assert np.mean(np.array(before) > engine.meta.threshold) < 0.1
