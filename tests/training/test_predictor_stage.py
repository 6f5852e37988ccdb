"""``optim.predictor_epochs``: after the other epochs only the scoring predictor trains, on the rest of
the model frozen in inference mode, and an interrupted run resumes inside those epochs."""

from __future__ import annotations

import pytest
import torch
import yaml

from amvad.models.registry import build_model
from amvad.training.config import load_config
from amvad.training.train import train
from tests.support.synthetic import tiny_config


def run(dataset, tmp_path, out, method="amsrc", resume=False, **optim):
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(tiny_config(dataset, tmp_path / out, method, **optim)))
    return torch.load(train(load_config(path), resume=resume, progress=False), weights_only=False)


def test_only_the_predictor_trains_and_resume_matches_one_run(synthetic_dataset, tmp_path):
    # given one epoch, and the same epoch followed by two of the predictor alone
    plain = run(synthetic_dataset, tmp_path, "plain")
    staged = run(synthetic_dataset, tmp_path, "staged", predictor_epochs=2, predictor_lr=1e-3)
    # then the predictor's weights moved and nothing else did, batch-norm statistics included
    assert staged["epoch"] == 3 and staged["complete"]
    moved = {k for k, v in staged["model"].items() if not torch.equal(v, plain["model"][k])}
    assert moved and all(k.startswith("decoder.") for k in moved)
    assert any(k.startswith("decoder.") and k.endswith("running_mean") for k in moved)  # it trains in train mode
    # and a finished run given the stage on resume ends where the straight one did
    run(synthetic_dataset, tmp_path, "resumed")
    resumed = run(synthetic_dataset, tmp_path, "resumed", resume=True, predictor_epochs=2, predictor_lr=1e-3)
    assert resumed["epoch"] == 3
    for k, v in staged["model"].items():
        assert torch.allclose(resumed["model"][k].float(), v.float(), atol=1e-5), k


def test_a_run_killed_inside_the_stage_resumes_to_the_same_model(synthetic_dataset, tmp_path):
    straight = run(synthetic_dataset, tmp_path, "straight", predictor_epochs=2, predictor_lr=1e-3)
    # given the same run killed in its last predictor epoch (after the checkpoint of the one before)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(tiny_config(synthetic_dataset, tmp_path / "killed", "amsrc",
                                               predictor_epochs=2, predictor_lr=1e-3)))

    def kill(step: dict) -> None:
        if step["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(path), progress=False, on_progress=kill)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=False)["epoch"] == 2
    # when resumed, it ends where the straight run did: the optimizer and the schedule carried over
    resumed = torch.load(train(load_config(path), resume=True, progress=False), weights_only=False)
    assert resumed["epoch"] == 3 and resumed["complete"]
    for k, v in straight["model"].items():
        assert torch.allclose(resumed["model"][k].float(), v.float(), atol=1e-5), k


@pytest.mark.parametrize("method", ["ammc", "comemory"])
def test_methods_without_such_a_predictor_refuse(method, synthetic_dataset, tmp_path):
    # training refuses the stage before it loads anything
    with pytest.raises(ValueError, match=f"predictor_epochs: {method} has no predictor"):
        run(synthetic_dataset, tmp_path, method, method=method, predictor_epochs=1)
    # and the model itself says so when asked for the stage's losses directly
    model = build_model(method, clip_len=4, channels=1, height=32, width=48, base_width=4)
    assert model.predictor() is None
    with pytest.raises(NotImplementedError, match=f"{method} has no predictor that trains alone"):
        model.predictor_losses(torch.rand(2, 4, 1, 32, 48), torch.zeros(2, 3, 2, 32, 48))
