"""The moving average of the weights (``optim.ema``): what it averages, and that the finished checkpoint
holds the average while a resumed run trains on from the raw weights."""

from __future__ import annotations

import pytest
import torch
import yaml

from amvad.training.config import load_config
from amvad.training.ema import WeightAverage
from amvad.training.train import train
from tests.support.synthetic import tiny_config


def test_average_follows_weights_and_copies_integer_buffers():
    # given a model with a parameter, a float buffer and an integer buffer
    model = torch.nn.BatchNorm1d(3)
    avg = WeightAverage(model, decay=0.9)
    # when its weights jump to a new value and stay there
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.num_batches_tracked.fill_(7)
    first = None
    for _ in range(200):
        avg.update(model)
        if first is None:
            first = avg.averaged()["weight"].clone()
    # then the average moves part of the way at first (the early decay is low) and reaches the new weights
    assert 1.0 < float(first[0]) < 3.0
    assert torch.allclose(avg.averaged()["weight"], torch.full((3,), 3.0), atol=1e-4)
    assert int(avg.averaged()["num_batches_tracked"]) == 7
    model.load_state_dict(avg.averaged())


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(torch.nn.Linear(2, 2), decay)


def test_finished_model_is_the_average_and_resume_matches_one_run(synthetic_dataset, tmp_path):
    def run(out, epochs, resume=False):
        raw = tiny_config(synthetic_dataset, tmp_path / out, "amsrc", epochs=epochs, ema=0.9)
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return torch.load(train(load_config(path), resume=resume, progress=False), weights_only=False)

    # given two epochs in one run, and one epoch then a resumed second in another folder
    straight = run("straight", 2)
    run("resumed", 1)
    resumed = run("resumed", 2, resume=True)
    # then the finished model is the average, not the last step's weights
    assert straight["model"].keys() == straight["train_model"].keys()
    differs = [k for k, v in straight["model"].items()
               if v.dtype.is_floating_point and not torch.equal(v, straight["train_model"][k])]
    assert differs
    for k, v in straight["ema"]["shadow"].items():
        assert torch.equal(straight["model"][k], v)
    # and the resumed run trained on from the raw weights: it ends where the straight run did
    assert resumed["ema"]["updates"] == straight["ema"]["updates"]
    for k, v in straight["model"].items():
        assert torch.allclose(resumed["model"][k].float(), v.float(), atol=1e-5), k
