"""The bundled exported model through ONNX Runtime: metadata, shapes, errors, and its Ped2 accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from models.registry import bundled_models, resolve_model
from service.engine import ExportedModel
from tests.synthetic import ped2_or_skip
from training.evaluate import evaluate


@pytest.fixture(scope="module")
def ped2_model() -> ExportedModel:
    return ExportedModel("ped2")


def test_bundled_model_describes_itself(ped2_model):
    meta = ped2_model.meta
    assert "ped2" in bundled_models()
    assert resolve_model("ped2").stat().st_size < 20 * 2 ** 20
    assert meta.input_names == ("frames", "flows") and meta.output_names == ("components", "heatmap", "prediction")
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
        ped2_model.score_clip(np.zeros((t - 1, c, h, w), np.float32))


def test_unknown_model_name():
    with pytest.raises(FileNotFoundError, match="neither a file nor a bundled model"):
        ExportedModel("no-such-model")


@pytest.mark.integration
@pytest.mark.slow
def test_bundled_model_ped2_auc_does_not_regress(tmp_path):
    # given the full Ped2 test split, when the bundled model is evaluated, then both protocols meet the
    # issue's targets (the model card records auc_paper 0.967, auc_stream 0.960)
    res = evaluate("ped2", ped2_or_skip(), json_out=tmp_path / "eval.json", progress=False)
    assert res["frames_scored"] == 2010 - 12 * (ExportedModel("ped2").meta.clip_len - 1)
    assert res["auc_paper"] >= 0.95 and res["auc_stream"] >= 0.93, res
