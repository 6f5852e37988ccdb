"""Dataset layouts and their errors: frame folders, video files (PyAV), labels, short clips; the training
split conditioned and augmented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from amvad.models.flow import build_flow
from amvad.models.registry import build_model, resolve_model
from amvad.runtime.exported_model import read_metadata
from amvad.training.config import Augment, TrainConfig, load_config
from amvad.training.data import ClipDataset, augmented, augmented_clip, find_clips, load_clip, load_labels
from amvad.training.train import load_split
from tests.support.synthetic import render_clip, tiny_config, write_clip, write_mp4


def test_frame_folders_and_labels(synthetic_dataset):
    clips = find_clips(synthetic_dataset, "testing")
    assert [c.name for c in clips] == ["01", "02"]
    frames = load_clip(clips[0], height=32, width=48, channels=1)
    assert frames.shape == (14, 1, 32, 48) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    labels = load_labels(synthetic_dataset, "testing", clips, [14, 14])
    assert labels[0].sum() == 6 and labels[1].sum() == 9


def test_video_files_decode_with_pyav(tmp_path):
    (tmp_path / "training").mkdir()
    write_mp4(tmp_path / "training" / "cam1.mp4", render_clip(12, speed=1.0, seed=0))
    (clip,) = find_clips(tmp_path, "training")
    assert clip.name == "cam1" and clip.is_video
    frames = load_clip(clip, height=32, width=48, channels=3)
    assert frames.shape == (12, 3, 32, 48)


def test_missing_and_malformed_dataset_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="training"):
        find_clips(tmp_path, "training")
    (tmp_path / "training" / "frames" / "01").mkdir(parents=True)
    (clip,) = find_clips(tmp_path, "training")
    with pytest.raises(FileNotFoundError, match="no frame images"):
        load_clip(clip, height=32, width=48, channels=1)


def test_unreadable_frame_is_named(tmp_path):
    folder = tmp_path / "training" / "frames" / "01"
    write_clip(folder, render_clip(3, speed=1.0, seed=0))
    (folder / "001.jpg").write_bytes(b"not a jpeg")
    (clip,) = find_clips(tmp_path, "training")
    with pytest.raises(ValueError, match="001.jpg"):
        load_clip(clip, height=32, width=48, channels=1)


def test_label_count_mismatch(synthetic_dataset):
    clips = find_clips(synthetic_dataset, "testing")
    with pytest.raises(ValueError, match="labels"):
        load_labels(synthetic_dataset, "testing", clips, [14, 15])


def test_clip_shorter_than_window_is_an_error():
    frames = np.zeros((3, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="clip short has 3 frames"):
        ClipDataset([(frames, np.zeros((2, 2, 8, 8), np.float32))], clip_len=5, names=["short"])


def test_windows_carry_explicit_frame_ids():
    frames = np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1) * np.ones((6, 1, 8, 8), np.float32)
    flows = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) * np.ones((5, 2, 8, 8), np.float32)
    ds = ClipDataset([(frames, flows)], clip_len=4, stride=1)
    assert ds.index == [(0, 3), (0, 4), (0, 5)]
    f, o = ds[1]
    assert f[:, 0, 0, 0].tolist() == [1, 2, 3, 4] and o[:, 0, 0, 0].tolist() == [1, 2, 3]


# -- conditioning and augmentation of the training split ---------------------------------------------
def test_the_training_split_is_conditioned_and_augmented_copies_have_their_own_flows(synthetic_dataset, tmp_path):
    raw = tiny_config(synthetic_dataset, tmp_path / "run", "comemory")
    raw["augment"] = [{"change": "noise", "magnitude": 8}, {"change": "jpeg", "magnitude": 20}]
    cfg = TrainConfig.model_validate(raw)
    model = build_model(cfg.model.method, **cfg.model.args)
    names, clips, conditioning = load_split(cfg, model, "training", torch.device("cpu"), progress=False,
                                            condition=True, augment=cfg.augment)
    # the clean clips, then each change's copies, each with flows of its own frames
    assert names == ["01", "02", "01 + noise 8", "02 + noise 8", "01 + jpeg 20", "02 + jpeg 20"]
    assert conditioning is not None and len(clips) == 6
    clean, noisy = clips[0], clips[2]
    assert clean[0].shape == noisy[0].shape and not np.allclose(clean[0], noisy[0])
    assert not np.allclose(clean[1], noisy[1])
    # the changes themselves: seeded noise of the asked σ, a lossy JPEG, a blur that smooths
    frames = clean[0]
    n1 = augmented(frames, cfg.augment[0], seed=1)
    assert np.array_equal(n1, augmented(frames, cfg.augment[0], seed=1))
    assert 6 / 255 < float(np.std(n1 - frames)) < 9 / 255
    assert 0 < float(np.abs(augmented(frames, cfg.augment[1], seed=0) - frames).mean()) < 0.05
    blurred = augmented(frames, Augment(change="blur", magnitude=2), seed=0)
    assert np.abs(np.diff(blurred, axis=-1)).mean() < np.abs(np.diff(frames, axis=-1)).mean()


def test_an_h264_copy_has_the_codecs_block_and_motion_losses_and_is_the_same_each_time(synthetic_dataset):
    frames = load_clip(find_clips(synthetic_dataset, "training")[0], height=32, width=48, channels=1)
    aug = Augment(change="h264", magnitude=40)
    coded = augmented(frames, aug, seed=0)
    assert coded.shape == frames.shape and coded.dtype == np.float32
    assert np.array_equal(coded, augmented(frames, aug, seed=5))  # one encoder thread: reproducible
    loss = float(np.abs(coded - frames).mean())
    assert 0 < loss < 0.1
    assert float(np.abs(augmented(frames, Augment(change="h264", magnitude=20), seed=0) - frames).mean()) < loss
    colour = np.repeat(frames, 3, axis=1)
    assert augmented(colour, aug, seed=0).shape == colour.shape


def test_a_change_at_the_camera_is_applied_before_the_frames_are_scaled_down(synthetic_dataset):
    """``at: camera`` codes the clip's decoded frames, as a camera's encoder does, and then scales them down:
    the same CRF then costs the model's frames less than coding them at the model's size."""
    src = find_clips(synthetic_dataset, "training")[0]
    frames = load_clip(src, height=32, width=48, channels=1)[:10]
    at_model = augmented_clip(src, frames, Augment(change="h264", magnitude=40), seed=0)
    at_camera = augmented_clip(src, frames, Augment(change="h264", magnitude=40, at="camera"), seed=0)
    assert at_camera.shape == frames.shape and at_camera.dtype == np.float32
    assert np.array_equal(at_camera, augmented_clip(src, frames, Augment(change="h264", magnitude=40, at="camera"),
                                                    seed=3))  # reproducible
    assert 0 < float(np.abs(at_camera - frames).mean()) < float(np.abs(at_model - frames).mean())
    noisy = augmented_clip(src, frames, Augment(change="noise", magnitude=8, at="camera"), seed=0)
    assert np.array_equal(noisy, augmented_clip(src, frames, Augment(change="noise", magnitude=8, at="camera"),
                                                seed=0))
    assert 0 < float(np.std(noisy - frames)) < 8 / 255  # averaged down with the pixels


CONFIGS = Path(__file__).parents[2] / "training" / "configs"


@pytest.mark.parametrize("name", ["ped2_comemory_robust.yaml", "ped2_ammc_robust.yaml", "ped2_amsrc_robust.yaml"])
def test_every_robust_recipe_learns_sensor_noise_and_a_codec_as_normal(name):
    changes = {a.change for a in load_config(CONFIGS / name).augment}
    assert "noise" in changes and changes & {"jpeg", "h264"}


def test_the_ammc_robust_recipe_is_the_plain_one_with_the_changes_and_as_many_steps():
    """Comparable with the plain recipe only if the model and the amount of training are the same."""
    recipe, plain = load_config(CONFIGS / "ped2_ammc_robust.yaml"), load_config(CONFIGS / "ped2_ammc.yaml")
    assert recipe.model == plain.model
    assert recipe.optim.epochs * (1 + len(recipe.augment)) == plain.optim.epochs


# every bundled model and the recipe it was trained with
BUNDLED_RECIPES = {"ped2": "ped2_comemory_robust.yaml", "ped2-ammc": "ped2_ammc_robust.yaml",
                   "ped2-amsrc": "ped2_amsrc_robust.yaml"}


@pytest.mark.parametrize("bundled, recipe", BUNDLED_RECIPES.items())
def test_each_bundled_model_scores_with_the_weights_of_its_recipe(bundled, recipe):
    """A bundled model's score weights, window, quantile and score arguments may be set again after training
    (``amvad export --weights --smoothing --smoothing-drop --threshold-quantile --score-arg``); its recipe must
    then say the same, so that training it again gives the model that ships."""
    cfg = load_config(CONFIGS / recipe)
    model = build_model(cfg.model.method, **cfg.model.args)
    meta = read_metadata(resolve_model(bundled))
    assert meta.method == cfg.model.method
    assert [c.name for c in meta.components] == list(model.component_names)
    assert [c.weight for c in meta.components] == pytest.approx(cfg.score.weights or list(model.default_weights))
    assert (meta.smoothing, meta.smoothing_drop) == (cfg.score.smoothing, cfg.score.smoothing_drop)
    assert meta.flow == build_flow(**cfg.flow).spec  # and the flow it sees (a span too, models/flow/span.py)
    assert meta.training["config"]["score"]["threshold_quantile"] == cfg.score.threshold_quantile
    # the arguments that change only how it scores (set again with ``--score-arg``) as the recipe's
    scoring = {k: v for k, v in model.model_args().items() if k in model.score_args}
    assert {k: meta.model_args.get(k) for k in scoring} == scoring
    # and the benign changes its threshold was taken under (none: the clean footage alone)
    assert meta.training["config"]["score"].get("calibrate_under", []) == cfg.score.calibrate_under
    assert (meta.learn_threshold is not None) == bool(cfg.score.calibrate_under)


@pytest.mark.parametrize("bundled", BUNDLED_RECIPES)
def test_every_bundled_model_levels_and_stabilises_what_it_is_shown(bundled):
    """Lights and shake are the camera's, not the scene's: every shipped model takes both out before it
    scores (issue 22), with the view and level of the footage it was fitted on."""
    cond = read_metadata(resolve_model(bundled)).conditioning
    assert cond is not None and cond.stabilise
    assert cond.reference and 0 < cond.brightness < 1 and cond.noise
