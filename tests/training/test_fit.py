"""``amvad fit``: footage discovery, the input size, the hold-out, refusing short footage, starting from
the bundled weights, and a whole (tiny) fit that writes a model and its card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from amvad.cli.main import main
from amvad.models.flow import build_flow
from amvad.models.registry import build_model
from amvad.runtime.exported_model import ExportedModel
from amvad.runtime.fit_job import FitSpec, read_progress, write_request
from amvad.training import fit as fit_module
from amvad.training.config import load_config
from amvad.training.fit import Clip, choose_size, find_footage, holdout_scores, model_card, split_holdout
from amvad.training.warm_start import training_only, weights_from_exported
from tests.support.synthetic import render_clip, write_clip, write_mp4


@pytest.mark.parametrize("w, h, want", [(360, 240, (128, 192)), (1920, 1080, (112, 200)), (640, 480, (128, 168)),
                                        (1080, 1920, (208, 112)), (100, 100, (152, 152))])
def test_input_size_keeps_the_aspect_within_the_bundled_models_cost(w, h, want):
    hh, ww = choose_size(w, h)
    assert (hh, ww) == want and hh % 8 == 0 and ww % 8 == 0 and hh * ww <= 128 * 192
    assert abs(ww / hh - w / h) / (w / h) < 0.1


def test_footage_is_videos_folders_of_videos_and_frame_folders(tmp_path):
    write_clip(tmp_path / "frames" / "morning", render_clip(6, speed=1.0, seed=0))
    (tmp_path / "videos").mkdir()
    write_mp4(tmp_path / "videos" / "a.mp4", render_clip(6, speed=1.0, seed=1))
    write_mp4(tmp_path / "videos" / "b.mp4", render_clip(6, speed=1.0, seed=2))
    write_mp4(tmp_path / "a.mp4", render_clip(6, speed=1.0, seed=3))
    found = find_footage([tmp_path / "frames" / "morning", tmp_path / "videos", tmp_path / "a.mp4"])
    assert [c.name for c in found] == ["morning", "a", "b", "a-2"]
    with pytest.raises(FileNotFoundError, match="not a video file"):
        find_footage([tmp_path / "frames"])  # a folder of folders is not footage


def test_the_end_of_each_clip_is_held_out():
    frames, flows = np.zeros((100, 1, 8, 8), np.float32), np.zeros((99, 2, 8, 8), np.float32)
    train, val = split_holdout(Clip("c", frames, flows, 10.0))
    assert len(train.frames) == 90 and len(train.flows) == 89 and len(val.frames) == 10 and len(val.flows) == 9
    whole, none = split_holdout(Clip("s", frames[:8], flows[:7], 10.0))
    assert none is None and len(whole.frames) == 8
    keyframes = np.arange(100) % 10 == 0  # a recording: one keyframe a second
    train, val = split_holdout(Clip("c", frames, flows, 10.0, keyframes))
    assert np.array_equal(train.keyframes, keyframes[:90]) and np.array_equal(val.keyframes, keyframes[90:])


def test_held_out_scores_skip_the_first_frame_of_each_group_of_pictures_as_a_stream_does(tiny_model):
    # given a held-out recording whose keyframes (ids 10, 20) make the model's errors jump
    model = ExportedModel(tiny_model)
    rng = np.random.default_rng(0)
    frames = np.clip(rng.normal(0.4, 0.02, (30, 1, model.meta.height, model.meta.width)), 0, 1).astype(np.float32)
    flows = np.zeros((29, 2, model.meta.height, model.meta.width), np.float32)
    frames[10] = frames[20] = np.clip(frames[10] + 0.3 * rng.standard_normal(frames[10].shape), 0, 1)
    keyframes = np.arange(30) % 10 == 0
    coded, plain = holdout_scores(model, [Clip("c", frames, flows, 10.0, keyframes), Clip("c", frames, flows, 10.0)])
    # then each keyframe's score is the one before it (a stream's), where scored as filmed it jumps
    ids = np.arange(model.meta.clip_len - 1, 30)
    at = {i: k for k, i in enumerate(ids)}
    assert coded[at[10]] == coded[at[9]] and coded[at[20]] == coded[at[19]]
    assert plain[at[10]] > coded[at[10]] + 1.0


def test_short_footage_is_refused_saying_how_much_is_needed(tmp_path, capsys):
    write_clip(tmp_path / "cam", render_clip(40, speed=1.0, seed=0))
    assert main(["fit", str(tmp_path / "cam"), "--out", str(tmp_path / "m.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "footage too short: 40 frames (4 s at 10 fps)" in err and "at least 334 frames" in err


def test_a_job_folders_fit_records_its_error_as_data(tmp_path, capsys):
    # given a job folder (as the service writes it) whose footage is too short
    write_clip(tmp_path / "cam", render_clip(40, speed=1.0, seed=0))
    write_request(tmp_path / "job", FitSpec(footage=[tmp_path / "cam"], out=tmp_path / "job" / "model.onnx"))
    # when the worker runs it, it fails as the command line would
    assert main(["fit", "--job", str(tmp_path / "job"), "--quiet"]) == 2
    assert "footage too short" in capsys.readouterr().err
    # and its progress record says why, as data
    progress = read_progress(tmp_path / "job" / "progress.json")
    assert progress.stage == "failed" and progress.error.kind == "input" and progress.error.type == "ValueError"
    assert progress.error.message.startswith("footage too short: 40 frames (4 s at 10 fps)")


def test_weights_of_the_bundled_model_fit_any_input_size_of_the_same_widths():
    model = build_model("comemory", clip_len=5, channels=1, height=48, width=64, base_width=12)
    model.load_state_dict(weights_from_exported(model, "ped2"))  # checked against ONNX Runtime inside
    with pytest.raises(ValueError, match="base_width=12, this model 8"):
        weights_from_exported(build_model("comemory", clip_len=5, channels=1, height=48, width=64, base_width=8),
                              "ped2")
    with pytest.raises(ValueError, match="comemory model; cannot start a amsrc model"):
        weights_from_exported(build_model("amsrc", clip_len=5, channels=1, height=48, width=64, base_width=12),
                              "ped2")


def test_an_amsrc_export_rebuilds_without_its_training_only_heads():
    """AMSRC-Net's flow and feature decoders shape training and never score, so its export does not hold
    them: a model rebuilt from the export (fine-tuning, a re-export) keeps them as initialised, and
    everything that scores comes from the graph (checked against ONNX Runtime inside)."""
    torch.manual_seed(0)
    model = build_model("amsrc", clip_len=5, channels=1, height=48, width=64, base_width=12)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights_from_exported(model, "ped2-amsrc"))
    state = model.state_dict()
    assert not torch.equal(state["speed_decoder.head.weight"], fresh["speed_decoder.head.weight"])
    assert training_only("flow_decoder.blocks.0.0.weight", {"frame_encoder", "speed_decoder"})
    assert not training_only("speed_decoder.head.weight", {"frame_encoder", "speed_decoder"})
    assert not training_only("items", {"frame_encoder"})  # the model's own parameters always come from the graph


@pytest.mark.parametrize("init", ["none", "ped2"])
def test_a_tiny_fit_writes_a_model_and_its_card(tmp_path, capsys, init, monkeypatch):
    recipe = fit_module.bundled_recipe

    def over_two_frames(method: str):  # the recipe's flow as a recipe could set it (models/flow/span.py)
        args, flow, score, changes = recipe(method)
        return args, {**flow, "span": 2}, score, changes

    monkeypatch.setattr(fit_module, "bundled_recipe", over_two_frames)
    clips = [write_mp4(tmp_path / f"cam{i}.mp4", render_clip(200, speed=1.0, seed=i)) for i in range(2)]
    out = tmp_path / "cam.onnx"
    width = "12" if init == "ped2" else "4"
    augment = ["--augment"] if init == "ped2" else []  # both ways
    assert main(["fit", *map(str, clips), "--out", str(out), "--minutes", "0.05", "--max-pixels", "1536",
                 "--base-width", width, "--init", init, "--threads", "1", "--quiet", *augment,
                 "--progress-json", str(tmp_path / "progress.json")]) == 0
    res = json.loads(capsys.readouterr().out)
    progress = read_progress(tmp_path / "progress.json")
    assert progress.stage == "done" and progress.result == res and progress.error is None
    assert res["frames"] == 400 and res["validation_frames"] == 2 * (20 - 4) and res["epochs"] >= 1
    assert res["threshold"] >= res["training_quantile_threshold"]
    assert res["validation_false_alarms_per_hour"] <= 1.0
    model = ExportedModel(out)
    assert (model.meta.height, model.meta.width) == (32, 40)  # 4:3 footage and model.meta.threshold == res["threshold"]
    assert model.meta.training["fit"]["init"] == init
    card = out.with_suffix(".md").read_text()
    assert "400 frames" in card and f"threshold {res['threshold']:.3f}" in card
    # how soft a picture it still judges, measured on the footage blurred, is in the model and on the card
    assert model.meta.conditioning.min_sharpness == res["min_sharpness"] and "| soft pictures |" in card
    # where a low-bitrate stream of this camera starts, measured on the footage coded at CRF 42 (none where
    # this small a picture shows no codec grid apart from the footage's own)
    assert "coded_start" in res and (res["coded_start"] is None) == (model.meta.coded_start is None)
    # with --augment, noise and a codec's losses learned as normal: the training part again, changed
    learned = ["noise 3", "jpeg 25"] if augment else []
    assert res["augment"] == learned and model.meta.training["fit"]["augment"] == learned
    assert res["train_frames"] == 400 - 40  # the footage's own frames; the copies come on top
    assert ("noise 3, jpeg 25" in card) if learned else ("as filmed only" in card)
    # and it sees the flow its recipe names
    assert model.meta.flow == build_flow(**over_two_frames("comemory")[1]).spec and model.meta.flow["span"] == 2


@pytest.mark.parametrize("method", ["ammc", "amsrc"])
def test_a_fit_trains_and_scores_as_the_methods_bundled_recipe(method, tmp_path, capsys):
    recipe = load_config(Path(fit_module.__file__).parent / "configs" / f"ped2_{method}_robust.yaml")
    clips = [write_mp4(tmp_path / f"cam{i}.mp4", render_clip(200, speed=1.0, seed=i)) for i in range(2)]
    out = tmp_path / "cam.onnx"
    assert main(["fit", *map(str, clips), "--out", str(out), "--minutes", "0.02", "--max-pixels", "1536",
                 "--base-width", "4", "--method", method, "--threads", "1", "--quiet", "--augment"]) == 0
    res = json.loads(capsys.readouterr().out)
    meta = ExportedModel(out).meta
    # --augment learns what the method's recipe learns as normal
    assert res["augment"] == [f"{a.change} {a.magnitude:g}" for a in recipe.augment] != []
    # the recipe's arguments beyond the sizes (AMMC-Net's commit weight, AMSRC-Net's speed error) and weights
    for name, value in recipe.model.args.items():
        if name not in ("clip_len", "channels", "height", "width", "base_width"):
            assert meta.model_args[name] == value, name
    weights = [c.weight for c in meta.components]
    want = recipe.score.weights or list(build_model(method, **recipe.model.args).default_weights)
    assert weights == pytest.approx(want)
    assert meta.smoothing_drop == recipe.score.smoothing_drop  # and its window (AMMC-Net leaves out 2 of 5)
    assert meta.flow == build_flow(**recipe.flow).spec
    # and its threshold is taken under the recipe's benign changes too, learning kept under the clean one
    assert res["calibrated_under"] == recipe.score.calibrate_under
    if recipe.score.calibrate_under:
        assert meta.learn_threshold == pytest.approx(res["training_quantile_threshold"])
        assert res["threshold"] >= res["benign_threshold"] >= res["training_quantile_threshold"]
        assert "too: " in out.with_suffix(".md").read_text()


def test_the_card_of_a_fit_the_service_registers_does_not_ask_to_upload_it():
    result = {"model": "/state/fits/1a2b/model.onnx", "method": "comemory", "date": "2026-12-01", "clips": 1,
              "frames": 400, "train_frames": 360, "validation_frames": 40, "validation_seconds": 4.0, "height": 32,
              "width": 40, "base_width": 4, "init": "none", "epochs": 3, "train_seconds": 5.0, "machine": "test",
              "flow": {"name": "tvl1"}, "smoothing": 5, "threshold": 1.5, "training_quantile_threshold": 1.5,
              "target_false_alarms_per_hour": 1.0, "validation_false_alarms_per_hour": 0.0, "footage": ["a.mp4"]}
    by_hand = model_card(result)
    assert "/v1/models?name=<name>" in by_hand and "Register it" in by_hand
    by_service = model_card(result, registered_as="gate")
    assert "The service registers it as `gate`" in by_service and "nothing to upload" in by_service
    assert "/v1/models" not in by_service and '{"model": "gate"}' in by_service


def test_an_ammc_export_rebuilds_in_its_training_stage():
    """AMMC-Net's stage is traced into its graph, not stored: a model rebuilt from the bundled export
    (stage 2, with the cross-modal transfer) takes the stage from the weights the graph holds, and the
    transfer's convolutions (a bias of their own before a batch norm) are mapped (checked against ONNX
    Runtime inside). Before, the rebuild counted stage 1's convolutions and refused the file."""
    model = build_model("ammc", clip_len=5, channels=1, height=48, width=64, base_width=12)
    model.load_state_dict(weights_from_exported(model, "ped2-ammc"))
    assert int(model.stage) == 2
