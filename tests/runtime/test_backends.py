"""Inference backends (runtime/backends) and the precision gate (runtime/parity): both backends give the
same named record; a reduced precision runs only with a passing parity record of this very model."""

from __future__ import annotations

import shutil
from datetime import date

import numpy as np
import pytest
import torch

from amvad.models.registry import resolve_model
from amvad.runtime import parity
from amvad.runtime.backends import BackendUnavailable, available, choose_backend, native_precisions
from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.exported_model import ExportedModel
from amvad.runtime.stream import Stream, results_in_order

needs_openvino = pytest.mark.skipif(not available("openvino"), reason="openvino not installed (pip install openvino)")
CPU = torch.device("cpu")


def windows(model: ExportedModel, n: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random frames and small flows: inputs in the range a model sees."""
    rng = np.random.default_rng(seed)
    frames = rng.random((n, *model.frame_shape), dtype=np.float32)
    frames = (frames + np.roll(frames, 1, axis=-1) + np.roll(frames, 1, axis=-2)) / 3
    flows = rng.normal(0, 1.5, (n, *model.flow_shape)).astype(np.float32)
    return frames, flows


def check(backend: str, precision: str, *, passed: bool, sha256: str = "") -> parity.ParityCheck:
    return parity.ParityCheck(backend=backend, precision=precision, passed=passed, component_shift_p99=0.01,
                              component_shift_max=0.02, auc_paper=0.967, auc_paper_fp32=0.967, auc_stream=0.96,
                              auc_stream_fp32=0.96, data="ped2 testing", frames=1962, date=date.today().isoformat())


@pytest.fixture
def model_copy(tmp_path):
    """The bundled model as a file of its own (its parity record is written beside it)."""
    path = tmp_path / "ped2.onnx"
    shutil.copy(resolve_model("ped2"), path)
    return path


def test_auto_picks_openvino_on_a_cpu_when_installed_and_onnxruntime_otherwise():
    assert choose_backend("auto", CPU) == ("openvino" if available("openvino") else "onnxruntime")
    assert choose_backend("auto", torch.device("cuda")) == "onnxruntime"
    assert choose_backend("onnxruntime", CPU) == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="unknown backend 'tensorrt'"):
        choose_backend("tensorrt", CPU)
    if available("openvino"):
        with pytest.raises(BackendUnavailable, match="runs on the CPU here"):
            choose_backend("openvino", torch.device("cuda"))


def test_cli_names_agree_with_the_runtime():
    from amvad.cli import main
    from amvad.runtime import backends
    assert main.BACKENDS == backends.BACKENDS and main.PRECISIONS == backends.PRECISIONS


@needs_openvino
def test_both_backends_give_the_same_record_at_fp32(model_copy):
    ort_model = ExportedModel(model_copy, device=CPU, threads=1, backend="onnxruntime")
    ov_model = ExportedModel(model_copy, device=CPU, threads=1, backend="openvino", precision="fp32")
    assert (ort_model.backend.name, ov_model.backend.name) == ("onnxruntime", "openvino")
    frames, flows = windows(ort_model)
    a, b = ort_model.run(frames, flows), ov_model.run(frames, flows)
    for name in ("components", "heatmap", "prediction"):
        want, got = getattr(a, name), getattr(b, name)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5, err_msg=name)
    # the tensor path (what the engine calls) gives the same as the array path
    t = ov_model.run_tensors(torch.from_numpy(frames), torch.from_numpy(flows))
    np.testing.assert_allclose(t.components, b.components, rtol=1e-6)


@needs_openvino
def test_a_reduced_precision_runs_only_with_a_passing_parity_record_of_this_model(model_copy):
    if "bf16" not in native_precisions("openvino", CPU):
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 / AMX)")
    sha = ExportedModel(model_copy, device=CPU, threads=1, backend="onnxruntime").sha256

    def load(precision: str = "auto") -> ExportedModel:
        return ExportedModel(model_copy, device=CPU, threads=1, backend="openvino", precision=precision)

    # no record: fp32, and the model says why and how to measure one
    m = load("bf16")
    assert m.precision.used == "fp32" and "no parity record" in m.precision.note and "--record" in m.precision.note
    assert load().precision.used == "fp32"
    # a failed check: still fp32, the note says it failed
    parity.write_check(model_copy, sha, check("openvino", "bf16", passed=False))
    assert "failed" in load("bf16").precision.note
    # a record of other content vouches for nothing
    parity.write_check(model_copy, "0" * 64, check("openvino", "bf16", passed=True))
    assert load("bf16").precision.used == "fp32"
    # a passing check of this content: bf16, under auto too
    parity.write_check(model_copy, sha, check("openvino", "bf16", passed=True))
    assert parity.record_path(model_copy).name == "ped2.parity.json"
    m = load()
    assert (m.precision.used, m.precision.note) == ("bf16", "")
    assert "bfloat16" in m.describe()["inference_precision"]
    # fp32 asked by name stays fp32; a precision the CPU lacks falls back and says so
    assert load("fp32").precision.used == "fp32"
    fp16 = load("fp16")
    assert fp16.precision.used == "fp32" and "not run natively" in fp16.precision.note
    # measuring a precision (amvad eval) skips the gate
    assert ExportedModel(model_copy, device=CPU, threads=1, backend="openvino", precision="bf16",
                         gate=False).precision.used == "bf16"


def test_onnxruntime_runs_fp32_and_says_why_when_asked_for_less(model_copy):
    m = ExportedModel(model_copy, device=CPU, threads=1, backend="onnxruntime", precision="bf16")
    assert m.precision.used == "fp32" and "does not run natively with onnxruntime" in m.precision.note


def test_the_parity_judge_holds_components_and_both_aucs_to_their_tolerances():
    assert parity.judge(0.01, (0.001, -0.004))
    assert not parity.judge(parity.COMPONENT_TOLERANCE * 1.1, (0.0, 0.0))
    assert not parity.judge(0.01, (0.0, -0.006))


@needs_openvino
def test_a_clip_scores_the_same_through_the_engine_on_either_backend(tiny_model, sample_mp4):
    """The whole path (decode, flow graph + model on OpenVINO) against ONNX Runtime + the PyTorch flow."""
    from amvad.training.data import ClipSource, iter_clip_frames
    scores = {}
    for backend in ("onnxruntime", "openvino"):
        engine = InferenceEngine(tiny_model, EngineConfig(device="cpu", backend=backend, precision="fp32"))
        try:
            assert engine.describe()["flow_runner"] == ("pytorch" if backend == "onnxruntime" else "openvino graph")
            results = [r for _, r in results_in_order(Stream(engine),
                                                           iter_clip_frames(ClipSource("clip", sample_mp4)))]
        finally:
            engine.close()
        scores[backend] = np.array([r.score for r in results if r.score is not None])
    assert len(scores["openvino"]) == len(scores["onnxruntime"]) > 10
    np.testing.assert_allclose(scores["openvino"], scores["onnxruntime"], rtol=1e-3, atol=1e-3)


@needs_openvino
def test_openvino_runs_a_batch_row_by_row_on_a_graph_of_batch_one(model_copy):
    """One input shape whatever the batch: OpenVINO keeps buffers for every shape it has seen (the service's
    memory grew in steps as cameras met new batch sizes)."""
    m = ExportedModel(model_copy, device=CPU, threads=1, backend="openvino", precision="fp32")
    assert all(i.get_partial_shape()[0] == 1 for i in m.backend.compiled.inputs)
    frames, flows = windows(m, n=3)
    batch = m.run(frames, flows)
    rows = [m.run(frames[i:i + 1], flows[i:i + 1]) for i in range(3)]
    assert batch.components.shape == (3, len(m.meta.graph_components)) and batch.heatmap.shape[0] == 3
    np.testing.assert_allclose(batch.components, np.concatenate([r.components for r in rows]), rtol=1e-6)
