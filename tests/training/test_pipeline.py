"""Every method: train one short epoch -> export to ONNX -> score through ONNX Runtime -> evaluate,
through the same code paths as a real run."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from amvad.cli.main import main
from amvad.models.flow import build_flow
from amvad.models.metadata import SPEED_COMPONENT, MotionSpeed
from amvad.runtime.exported_model import ExportedModel, read_metadata
from amvad.runtime.motion_speed import clip_speed
from amvad.training.config import load_config
from amvad.training.data import find_clips, iter_clip_frames
from amvad.training.evaluate import evaluate
from amvad.training.export import export
from amvad.training.motion_reference import model_inputs
from amvad.training.perturbations import BATTERY
from amvad.training.train import train
from tests.support.model_files import with_metadata
from tests.support.synthetic import tiny_config


def write_config(tmp_path, cfg: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("method", ["ammc", "amsrc", "comemory"])
def test_train_export_score_eval(method, synthetic_dataset, tmp_path):
    # given a tiny config for the method (AMMC-Net runs one epoch of each stage)
    optim = {"epochs": 2, "stage1_epochs": 1} if method == "ammc" else {}
    cfg = load_config(write_config(tmp_path, tiny_config(synthetic_dataset, tmp_path / "run", method, **optim)))
    # when trained, exported and evaluated
    ckpt = train(cfg, progress=False)
    onnx_path = tmp_path / f"{method}.onnx"
    meta = export(ckpt, onnx_path)
    res = evaluate(onnx_path, synthetic_dataset, json_out=tmp_path / "eval.json", plot_dir=tmp_path / "plots",
                   progress=False)
    # then the model describes itself and every frame with a full window is scored
    assert meta.method == method and meta.flow["name"] == "tvl1" and meta.flow["levels"] == 2
    assert [c.name for c in meta.components] and all(c.std > 0 for c in meta.components)
    assert res["frames_scored"] == 2 * (14 - 3) and res["frames_total"] == 28
    assert 0.0 <= res["auc_paper"] <= 1.0 and 0.0 <= res["auc_stream"] <= 1.0
    assert json.loads((tmp_path / "eval.json").read_text())["per_clip"][0]["clip"] == "01"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["01.png", "02.png", "roc.png"]
    for protocol in ("stream", "paper"):
        point = res["alarms"][protocol]["at_recall_90"]
        assert point["frame_recall"] >= 0.9 and point["events_total"] == 2  # one labelled run per clip
        assert set(point["detection_delay_s"]) == {"median", "p90"}
    assert res["alarms"]["stream"]["at_threshold"]["threshold"] == pytest.approx(meta.threshold, abs=1e-6)
    # and the exported model scores a batch with the shapes of the contract
    em = ExportedModel(onnx_path)
    frames = np.random.rand(3, 4, 1, 32, 48).astype(np.float32)
    out = em.run(frames, em.compute_flows(frames.reshape(12, 1, 32, 48))[:9].reshape(3, 3, 2, 32, 48))
    assert out.components.shape == (3, len(meta.components))
    assert out.heatmap.shape == (3, 1, 32, 48) and (out.heatmap >= 0).all()
    assert np.isfinite(out.components).all()


def test_resume_continues_and_export_refuses_unfinished(synthetic_dataset, tmp_path):
    import torch
    raw = tiny_config(synthetic_dataset, tmp_path / "run", "amsrc")
    cfg = load_config(write_config(tmp_path, raw))
    ckpt = train(cfg, progress=False)
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 1 and state["complete"]
    # an unfinished checkpoint (as left by an interrupted run) is refused by export
    state["complete"] = False
    unfinished = tmp_path / "unfinished.pt"
    torch.save(state, unfinished)
    with pytest.raises(ValueError, match="did not finish"):
        export(unfinished, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    # resuming with more epochs continues from epoch 1
    raw["optim"]["epochs"] = 2
    ckpt2 = train(load_config(write_config(tmp_path, raw)), resume=True, progress=False)
    assert torch.load(ckpt2, weights_only=False)["epoch"] == 2


def test_resume_takes_checkpoints_saved_before_an_argument_and_score_only_changes(synthetic_dataset, tmp_path):
    import torch
    raw = tiny_config(synthetic_dataset, tmp_path / "run", "amsrc")
    ckpt = train(load_config(write_config(tmp_path, raw)), progress=False)
    # given a checkpoint saved before AMSRC-Net had speed_against (its model_args lack it)
    state = torch.load(ckpt, weights_only=False)
    del state["model_args"]["speed_against"]
    torch.save(state, ckpt)
    # then it resumes, with the score-only argument set another way, into the stage it was given
    raw["model"]["args"]["speed_against"] = "either"
    raw["optim"].update(predictor_epochs=1, predictor_lr=1e-3)
    resumed = torch.load(train(load_config(write_config(tmp_path, raw)), resume=True, progress=False),
                         weights_only=False)
    assert resumed["epoch"] == 2 and resumed["model_args"]["speed_against"] == "either"
    # but an argument that changes the network is still refused
    raw["model"]["args"]["base_width"] = raw["model"]["args"].get("base_width", 4) * 2
    with pytest.raises(ValueError, match="different model; refusing to resume"):
        train(load_config(write_config(tmp_path, raw)), resume=True, progress=False)


def test_export_of_a_conditioned_run_measures_its_blur_limit_on_the_training_data(synthetic_dataset, tmp_path,
                                                                                   monkeypatch, capsys):
    from amvad.training import condition
    ckpt = train(load_config(write_config(tmp_path, tiny_config(synthetic_dataset, tmp_path / "run", "amsrc"))),
                 progress=False)
    measured = []

    def limit(model, sources, **kw):
        measured.append([s.name for s in sources])
        return 0.42
    monkeypatch.setattr(condition, "blur_tolerance", limit)
    # given the training split where the run's config says, the limit is measured on it and written
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert measured == [["01", "02"]] and read_metadata(out).conditioning.min_sharpness == 0.42
    # without it (another machine) the model is exported all the same, and the message says how to add it
    moved = synthetic_dataset.parent / "moved"
    synthetic_dataset.rename(moved)
    try:
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
        assert read_metadata(out).conditioning.min_sharpness is None
        assert "blur limit not measured" in capsys.readouterr().err and len(measured) == 1
    finally:
        moved.rename(synthetic_dataset)


def test_export_of_a_run_whose_recipe_calibrates_under_benign_changes_takes_its_threshold_so(
        synthetic_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(BATTERY, "shake", dataclasses.replace(BATTERY["shake"], magnitudes=(3.0,)))
    cfg = tiny_config(synthetic_dataset, tmp_path / "run", "amsrc")
    cfg["score"] = {**cfg.get("score", {}), "calibrate_under": ["shake", "noise"]}
    cfg["conditioning"] = {"stabilise": False}  # the shake stays in: far over the clean threshold
    ckpt = train(load_config(write_config(tmp_path, cfg)), progress=False)
    plain, benign = tmp_path / "plain.onnx", tmp_path / "benign.onnx"
    export(ckpt, plain)  # the library's export alone: the training statistics' threshold
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(benign)]) == 0
    a, b = read_metadata(plain), read_metadata(benign)
    assert a.learn_threshold is None and b.learn_threshold == pytest.approx(a.threshold) and a.threshold < b.threshold
    assert b.training["config"]["score"]["calibrate_under"] == ["shake", "noise"]


def test_a_recipe_that_weighs_the_speed_component_takes_its_statistics_as_the_engine_reads_it(
        synthetic_dataset, tmp_path):
    cfg = tiny_config(synthetic_dataset, tmp_path / "run", "comemory")
    cfg["score"] = {**cfg["score"], "speed_weight": 1.5}
    meta = export(train(load_config(write_config(tmp_path, cfg)), progress=False), tmp_path / "m.onnx")
    assert meta.speed == MotionSpeed() and meta.components[-1].name == SPEED_COMPONENT
    assert meta.components[-1].weight == 1.5
    # the training windows' statistics are those of the speed read on the footage as the model takes it, the
    # whole-clip reading the engine's frame-by-frame one equals (tests/runtime/test_motion_speed.py)
    flow = build_flow(**meta.flow)
    served = np.concatenate([
        clip_speed(model_inputs(list(iter_clip_frames(src)), meta.height, meta.width, meta.channels,
                                meta.conditioning), flow, meta.speed)[meta.clip_len - 1:]
        for src in find_clips(synthetic_dataset, "training")])
    assert meta.components[-1].mean == pytest.approx(served.mean(), rel=1e-4)
    assert meta.components[-1].std == pytest.approx(served.std(), rel=1e-3)


def test_cli_reports_bad_config_and_missing_data(tmp_path, capsys, synthetic_dataset):
    raw = tiny_config(synthetic_dataset, tmp_path / "run", "amsrc")
    raw["optim"]["epochz"] = 3
    assert main(["train", "--config", str(write_config(tmp_path, raw)), "--quiet"]) == 2
    assert "epochz" in capsys.readouterr().err
    assert main(["eval", "--model", "nope.onnx", "--data", str(tmp_path), "--quiet"]) == 2
    assert "nope.onnx" in capsys.readouterr().err


def test_condition_on_adds_conditioning_to_the_same_graph(tiny_model, synthetic_dataset, tmp_path):
    plain = with_metadata(tiny_model, tmp_path / "plain.onnx", conditioning=None)
    # a model from before conditioning, given it from its training footage, level matching only
    out = tmp_path / "conditioned.onnx"
    assert main(["export", "--onnx", str(plain), "--out", str(out), "--condition-on", str(synthetic_dataset),
                 "--no-stabilise"]) == 0
    meta, before = read_metadata(out), read_metadata(plain)
    assert meta.conditioning is not None and meta.conditioning.stabilise is False and meta.conditioning.noise > 0
    assert onnx.load(str(out)).graph == onnx.load(str(plain)).graph
    # the score statistics are those of the training footage as it is now served: conditioned
    assert [c.name for c in meta.components] == [c.name for c in before.components]
    assert [c.mean for c in meta.components] != [c.mean for c in before.components] and meta.threshold > 0
    assert "conditioned" in meta.training["statistics"]
    # and how soft a picture it still judges was measured on that footage (the tiny model: maybe any)
    limit = meta.conditioning.min_sharpness
    assert limit is None or 0 < limit <= 0.5
    same = {"conditioning", "components", "threshold", "training", "coded_start"}
    assert meta.model_dump(exclude=same) == before.model_dump(exclude=same)
    # without a model to add it to, it is refused
    assert main(["export", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(out), "--condition-on",
                 str(synthetic_dataset)]) != 0


def test_condition_on_takes_new_weights_and_their_threshold(tiny_model, synthetic_dataset, tmp_path, capsys):
    same, weighted = tmp_path / "same.onnx", tmp_path / "weighted.onnx"
    base = ["export", "--onnx", str(tiny_model), "--condition-on", str(synthetic_dataset), "--no-stabilise"]
    assert main([*base, "--out", str(same)]) == 0
    assert main([*base, "--out", str(weighted), "--weights", "0,0,1"]) == 0
    a, b = read_metadata(same), read_metadata(weighted)
    assert [c.weight for c in b.components] == [0, 0, 1]
    # the statistics of each component do not depend on the weights; the threshold does
    assert [v for c in b.components for v in (c.mean, c.std)] == pytest.approx(
        [v for c in a.components for v in (c.mean, c.std)])
    assert b.threshold != pytest.approx(a.threshold)
    capsys.readouterr()
    for bad in ("1,1", "1,-1,1", "0,0,0"):
        assert main([*base, "--out", str(tmp_path / "bad.onnx"), "--weights", bad]) == 2
        assert "--weights" in capsys.readouterr().err and not (tmp_path / "bad.onnx").exists()
    assert main(["export", "--onnx", str(tiny_model), "--out", str(tmp_path / "bad.onnx"), "--weights", "1,1,1"]) == 2
    assert "--condition-on" in capsys.readouterr().err


def test_condition_on_takes_a_window_that_drops_its_highest_frames(tiny_model, synthetic_dataset, tmp_path,
                                                                    capsys):
    five = with_metadata(tiny_model, tmp_path / "five.onnx", smoothing=5)  # a window of 5 frames, as shipped
    same, dropped = tmp_path / "same.onnx", tmp_path / "dropped.onnx"
    base = ["export", "--onnx", str(five), "--condition-on", str(synthetic_dataset), "--no-stabilise"]
    assert main([*base, "--out", str(same)]) == 0
    assert main([*base, "--out", str(dropped), "--smoothing-drop", "2"]) == 0
    a, b = read_metadata(same), read_metadata(dropped)
    assert a.smoothing_drop == 0 and b.smoothing_drop == 2 and b.smoothing == a.smoothing == 5
    assert b.components == a.components and b.threshold < a.threshold  # the same frames, each window lower
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad.onnx"), "--smoothing-drop", "3"]) == 2  # most of the window
    assert "smoothing_drop" in capsys.readouterr().err and not (tmp_path / "bad.onnx").exists()
    assert main(["export", "--onnx", str(tiny_model), "--out", str(tmp_path / "bad.onnx"),
                 "--smoothing-drop", "1"]) == 2
    assert "--condition-on" in capsys.readouterr().err


def test_condition_on_takes_a_longer_window_and_another_quantile_and_keeps_them(tiny_model, synthetic_dataset,
                                                                              tmp_path, capsys):
    """``--smoothing 7 --smoothing-drop 3 --threshold-quantile 0.997``: the score the threshold is taken under
    is recorded as the model's, so conditioning the result again (no options) gives the same threshold."""
    base = ["export", "--condition-on", str(synthetic_dataset), "--no-stabilise"]
    seven, higher, again = tmp_path / "seven.onnx", tmp_path / "higher.onnx", tmp_path / "again.onnx"
    window = ["--smoothing", "7", "--smoothing-drop", "3"]
    assert main([*base, "--onnx", str(tiny_model), "--out", str(seven), *window]) == 0
    assert main([*base, "--onnx", str(tiny_model), "--out", str(higher), *window, "--threshold-quantile", "0.997"]) == 0
    assert main([*base, "--onnx", str(higher), "--out", str(again)]) == 0
    a, b, c = read_metadata(seven), read_metadata(higher), read_metadata(again)
    assert (a.smoothing, a.smoothing_drop) == (b.smoothing, b.smoothing_drop) == (c.smoothing, c.smoothing_drop) == (7, 3)
    assert b.threshold > a.threshold and c.threshold == pytest.approx(b.threshold)
    assert b.training["config"]["score"]["threshold_quantile"] == 0.997
    capsys.readouterr()
    assert main([*base, "--onnx", str(tiny_model), "--out", str(tmp_path / "bad.onnx"),
                 "--threshold-quantile", "1.5"]) == 2
    assert "threshold_quantile" in capsys.readouterr().err and not (tmp_path / "bad.onnx").exists()
    assert main(["export", "--onnx", str(tiny_model), "--out", str(tmp_path / "bad.onnx"), "--smoothing", "7"]) == 2
    assert "--condition-on" in capsys.readouterr().err


def test_condition_on_takes_the_threshold_under_benign_changes_too_and_keeps_learning_under_the_clean_one(
        tiny_model, synthetic_dataset, tmp_path, capsys, monkeypatch):
    """``--calibrate-under noise,shake,compression``: the normal footage scored again under each change (at
    a magnitude of its sweep) joins the clean scores the threshold is a quantile of; the running statistics
    still learn only under the clean footage's own quantile, so no score changes; conditioning the result
    again takes the same changes (recorded as the model's)."""
    # a sweep of one magnitude: shake ± 3 px, which the tiny model, not stabilised, scores far over its threshold
    monkeypatch.setitem(BATTERY, "shake", dataclasses.replace(BATTERY["shake"], magnitudes=(3.0,)))
    base = ["export", "--condition-on", str(synthetic_dataset), "--no-stabilise"]
    clean, benign, again = tmp_path / "clean.onnx", tmp_path / "benign.onnx", tmp_path / "again.onnx"
    assert main([*base, "--onnx", str(tiny_model), "--out", str(clean)]) == 0
    assert main([*base, "--onnx", str(tiny_model), "--out", str(benign), "--calibrate-under",
                 "noise,shake,compression"]) == 0
    a, b = read_metadata(clean), read_metadata(benign)
    assert a.learn_threshold is None and b.components == a.components
    assert b.learn_threshold == pytest.approx(a.threshold) and b.threshold > a.threshold
    assert b.training["config"]["score"]["calibrate_under"] == ["noise", "shake", "compression"]
    assert main([*base, "--onnx", str(benign), "--out", str(again)]) == 0
    c = read_metadata(again)
    assert (c.threshold, c.learn_threshold) == pytest.approx((b.threshold, b.learn_threshold))
    # 'none' goes back to the clean footage alone
    assert main([*base, "--onnx", str(benign), "--out", str(again), "--calibrate-under", "none"]) == 0
    d = read_metadata(again)
    assert d.learn_threshold is None and d.threshold == pytest.approx(a.threshold)
    capsys.readouterr()
    assert main([*base, "--onnx", str(tiny_model), "--out", str(tmp_path / "bad.onnx"),
                 "--calibrate-under", "rain"]) == 2
    assert "rain" in capsys.readouterr().err and not (tmp_path / "bad.onnx").exists()
    assert main(["export", "--onnx", str(tiny_model), "--out", str(tmp_path / "bad.onnx"),
                 "--calibrate-under", "all"]) == 2
    assert "--condition-on" in capsys.readouterr().err


def test_score_arg_rescores_the_same_weights_and_takes_the_statistics_again(tiny_model, synthetic_dataset, tmp_path,
                                                                           capsys):
    """``--score-arg speed_against=either``: AMSRC-Net's weights as they were (recovered from the graph),
    its speed component judged against either adjacent flow, and statistics and threshold taken again
    under it; an argument that would change the network, or one without --condition-on, is refused."""
    same, either = tmp_path / "same.onnx", tmp_path / "either.onnx"
    base = ["export", "--onnx", str(tiny_model), "--condition-on", str(synthetic_dataset), "--no-stabilise"]
    assert main([*base, "--out", str(same)]) == 0
    assert main([*base, "--out", str(either), "--score-arg", "speed_against=either"]) == 0
    a, b = read_metadata(same), read_metadata(either)
    assert a.model_args["speed_against"] == "last" and b.model_args["speed_against"] == "either"
    assert b.training["score_args"] == {"speed_against": "either"}
    assert [c.mean for c in b.components][:2] == pytest.approx([c.mean for c in a.components][:2])
    assert b.components[2].mean < a.components[2].mean  # the nearer flow's error: never larger
    weights = lambda path: sorted(numpy_helper.to_array(i).tobytes() for i in onnx.load(str(path)).graph.initializer)
    assert weights(either) == weights(same)
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad.onnx"), "--score-arg", "base_width=8"]) == 2
    assert "score argument 'base_width'" in capsys.readouterr().err and not (tmp_path / "bad.onnx").exists()
    assert main(["export", "--onnx", str(tiny_model), "--out", str(tmp_path / "bad.onnx"),
                 "--score-arg", "speed_against=either"]) == 2
    assert "--condition-on" in capsys.readouterr().err


def test_coded_start_on_adds_the_low_bitrate_footages_statistics_and_nothing_else(tiny_model, tmp_path):
    from pydantic import ValidationError

    from amvad.models.metadata import ModelMetadata
    from amvad.training.condition import blockiness_switch
    from tests.support.scenes import camera_view

    # given footage at a camera's size (the synthetic dataset's 72x96 frames are too small for a codec's grid)
    data = tmp_path / "data"
    for k in range(2):
        (data / "training" / "frames" / f"{k:02d}").mkdir(parents=True)
        for f in camera_view(8, seed=k):
            cv2.imwrite(str(data / "training" / "frames" / f"{k:02d}" / f"{f.frame_id:03d}.png"), f.pixels)
    out = tmp_path / "coded.onnx"
    assert main(["export", "--onnx", str(tiny_model), "--out", str(out), "--coded-start-on", str(data)]) == 0
    meta, before = read_metadata(out), read_metadata(tiny_model)
    start = meta.coded_start
    # the switch lies between the clean footage's blockiness (~1.0) and the coded footage's (~1.4)
    assert start is not None and start.crf == 42.0 and 1.05 < start.min_blockiness < 1.4, start
    assert len(start.mean) == len(start.std) == len(meta.components) and min(start.std) > 0
    assert meta.model_dump(exclude={"coded_start"}) == before.model_dump(exclude={"coded_start"})
    assert onnx.load(str(out)).graph == onnx.load(str(tiny_model)).graph
    # the switch: 3/4 of the way up from the clean footage (or from 1, a picture without a grid), else none
    assert blockiness_switch([1.15, 1.22], [1.60, 1.81]) == round(1.22 + 0.75 * 0.38, 4)
    assert blockiness_switch([0.70, 0.75], [1.40]) == 1.3  # footage too small to show its own grid reads under 1
    assert blockiness_switch([0.70, 0.75], [0.90, 0.95]) is None and blockiness_switch([1.2], [1.2, 1.5]) is None
    # one statistic per component, or the metadata is refused
    with pytest.raises(ValidationError, match="coded_start"):
        ModelMetadata.model_validate({**meta.model_dump(), "coded_start": {**start.model_dump(), "mean": [1.0],
                                                                          "std": [1.0]}})
    # with --condition-on (which takes it too), or without an exported model, the option is refused
    assert main(["export", "--onnx", str(tiny_model), "--out", str(out), "--coded-start-on", str(data),
                 "--condition-on", str(data)]) == 2
    assert main(["export", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(out), "--coded-start-on",
                 str(data)]) == 2
