"""The bundled exported model through ONNX Runtime: metadata, shapes and errors."""

from __future__ import annotations

import numpy as np
import pytest

from models.registry import bundled_models, resolve_model
from runtime.exported_model import ExportedModel
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
