"""The contract's shared pieces: every method records its constructor arguments the same way."""

from __future__ import annotations

import inspect
import json

import pytest

from models.registry import METHODS, build_model


@pytest.mark.parametrize("method", sorted(METHODS))
def test_model_args_record_the_call_with_defaults_filled_in(method):
    model = build_model(method, clip_len=4, channels=1, height=32, width=48, base_width=4)
    args = model.model_args()
    assert args["base_width"] == 4 and args["height"] == 32 and args["flow_scale"] == model.flow_scale
    # every keyword of the constructor is recorded, JSON-safe, and rebuilds an equal model
    params = [p for p in inspect.signature(type(model).__init__).parameters if p != "self"]
    assert sorted(args) == sorted(params)
    rebuilt = build_model(method, **json.loads(json.dumps(args)))
    assert rebuilt.model_args() == args
    # the record is a copy: changing it does not change the model's
    args["height"] = 64
    assert model.model_args()["height"] == 32
