"""The bundled exported models through ONNX Runtime: metadata, shapes, errors, the metadata's bounds, the
cost of a frame measured at load, and each one flagging the sample's cyclist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amvad.models.registry import bundled_models, resolve_model
from amvad.runtime.engine import InferenceEngine
from amvad.runtime.errors import Invalid
from amvad.runtime.exported_model import ExportedModel, InvalidModelFile
from amvad.runtime.stream import Stream, results_in_order
from amvad.runtime.video import iter_frames, open_source
from amvad.runtime.windows import scored_frames
from tests.support.model_files import with_metadata


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
    assert out.components.shape == (2, len(ped2_model.meta.graph_components)) and np.isfinite(out.components).all()
    assert out.heatmap.shape == (2, 1, h, w) and out.prediction.shape == (2, c, h, w)


def test_wrong_shaped_inputs_are_rejected(ped2_model):
    t, c, h, w = ped2_model.frame_shape
    with pytest.raises(ValueError, match="frames must have shape"):
        ped2_model.run(np.zeros((1, t, c, h + 8, w), np.float32), np.zeros((1, t - 1, 2, h, w), np.float32))
    with pytest.raises(ValueError, match="flows must have shape"):
        ped2_model.run(np.zeros((1, t, c, h, w), np.float32), np.zeros((1, t, 2, h, w), np.float32))
    with pytest.raises(ValueError, match="fewer than the clip length"):
        scored_frames(t - 1, t)


def test_loading_measures_one_frame_of_flow_and_model(ped2_model):
    cost = ped2_model.warmup
    assert cost.flow_s > 0 and cost.model_s > 0 and cost.seconds == cost.flow_s + cost.model_s
    again = ped2_model.measure()
    assert again.seconds > 0 and "flow" in again.describe()


def test_a_million_flow_iterations_are_refused_at_load_naming_the_field(tiny_model, tmp_path):
    # given a model whose metadata asks for 1,000,000 TV-L1 iterations per warp (the graph untouched)
    bad = with_metadata(tiny_model, tmp_path / "bad.onnx", flow={"name": "tvl1", "iterations": 1_000_000})
    # then loading refuses it before any frame runs, saying which setting, its value and the bound
    with pytest.raises(InvalidModelFile, match=r"bad.onnx: metadata flow: tvl1 parameter 'iterations' must be "
                                               r"an int in \[1, 1000\], got 1000000") as err:
        ExportedModel(bad)
    assert isinstance(err.value, Invalid) and isinstance(err.value, ValueError) and err.value.status == 422


@pytest.mark.parametrize("fields, says", [
    ({"clip_len": 10 ** 6}, r"clip_len = 1000000 is outside the bounds \[3, 32\]"),
    ({"height": 8 * 10 ** 5}, r"height = 800000 is outside the bounds \[8, 4096\]"),
    ({"smoothing": 10 ** 9}, r"smoothing = 1000000000 is outside the bounds \[1, 1000\]"),
    ({"clip_len": 1}, r"metadata field clip_len: Input should be greater than or equal to 3 \(got 1\)"),
])
def test_other_absurd_metadata_is_refused_at_load(tiny_model, tmp_path, fields, says):
    with pytest.raises(InvalidModelFile, match=says):
        ExportedModel(with_metadata(tiny_model, tmp_path / "bad.onnx", **fields))


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
