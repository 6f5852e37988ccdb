"""``optim.schedule``: the learning rate over the epochs, constant or annealed along a cosine, and a run
stopped part-way resumes on the same schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import yaml
from pydantic import ValidationError

from amvad.training.config import OptimConfig, load_config
from amvad.training.train import set_lr, train
from tests.support.synthetic import tiny_config


def lrs(schedule: str, steps: int) -> list[float]:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    out = []
    for step in range(steps):
        set_lr(opt, 1e-3, schedule, step, steps)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_goes_from_lr_to_nearly_zero_and_constant_stays():
    cos = lrs("cosine", 100)
    assert cos[0] == pytest.approx(1e-3) and cos[50] == pytest.approx(5e-4)
    assert cos[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 99 / 100))) and cos[-1] < 1e-6
    assert all(a > b for a, b in itertools.pairwise(cos))
    assert lrs("constant", 10) == [pytest.approx(1e-3)] * 10


def test_cosine_with_a_time_budget_is_refused():
    with pytest.raises(ValidationError, match="schedule cosine anneals over all the epochs"):
        OptimConfig(schedule="cosine", time_budget_min=5)


def test_a_cosine_run_stopped_after_an_epoch_resumes_to_the_same_model(synthetic_dataset, tmp_path):
    def config(out: str):
        path = tmp_path / f"{out}.yaml"
        raw = tiny_config(synthetic_dataset, tmp_path / out, "comemory", epochs=2, lr=1e-3, schedule="cosine")
        raw["data"]["flow_cache"] = str(tmp_path / "flows")  # the clips' flows, taken once for both runs
        path.write_text(yaml.safe_dump(raw))
        return load_config(path)

    def weights(ckpt) -> dict:
        return torch.load(ckpt, weights_only=False)["model"]

    seen = []
    straight = weights(train(config("straight"), progress=False, on_progress=lambda d: seen.append(d["lr"])))
    # every step of the run followed the schedule, from lr down towards 0
    assert seen == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * i / len(seen))) for i in range(len(seen))])

    def stop(step: dict) -> None:  # killed in the second epoch, after the first one's checkpoint
        if step["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config("stopped"), progress=False, on_progress=stop)
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = weights(train(config("stopped"), resume=True, progress=False))
    for k, v in straight.items():
        assert torch.allclose(resumed[k].float(), v.float(), atol=1e-5), k
