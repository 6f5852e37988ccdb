"""The contract's shared pieces: every method records its constructor arguments the same way, and what sets
the work per frame (input size, clip length, smoothing, flow settings) is bounded."""

from __future__ import annotations

import inspect
import json

import onnx
import pytest

from amvad.models.contract import check_input_size, check_metadata
from amvad.models.flow import MAX_FLOW_WORK, build_flow
from amvad.models.metadata import METADATA_KEY, ModelMetadata
from amvad.models.registry import METHODS, build_model, bundled_models


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


# -- bounds on what sets the work per frame ---------------------------------------------------------------
def bundled_metadata(name: str = "ped2") -> ModelMetadata:
    proto = onnx.load(str(bundled_models()[name]), load_external_data=False)
    return ModelMetadata.model_validate_json(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_every_bundled_models_metadata_is_within_bounds(name):
    check_metadata(bundled_metadata(name))


def test_the_largest_fit_input_is_within_bounds():
    # amvad fit: at most 1024*1024 pixels (any aspect ratio), clip length 5, the default flow
    meta = bundled_metadata().model_copy(update={"height": 768, "width": 1360})
    check_metadata(meta)
    check_input_size(clip_len=5, channels=1, height=32, width=4096)  # a strip from very wide footage


@pytest.mark.parametrize("field, value, bound", [
    ("clip_len", 1000, "[3, 32]"), ("height", 100_000, "[8, 4096]"), ("width", 0, "[8, 4096]"),
    ("channels", 4, "[1, 3]"),
])
def test_an_absurd_input_size_is_refused_naming_the_field_value_and_bound(field, value, bound):
    size = {"clip_len": 5, "channels": 1, "height": 128, "width": 192, field: value}
    with pytest.raises(ValueError, match=rf"{field} = {value} is outside the bounds \{bound}"):
        check_input_size(**size)


def test_too_many_pixels_are_refused_even_with_legal_sides():
    with pytest.raises(ValueError, match=r"pixels = 16777216 is outside the bounds \[64, 1048576\]"):
        check_input_size(clip_len=5, channels=1, height=4096, width=4096)


def test_a_million_flow_iterations_are_refused_naming_the_setting():
    meta = bundled_metadata()
    meta = meta.model_copy(update={"flow": {**meta.flow, "iterations": 1_000_000}})
    with pytest.raises(ValueError, match=r"flow: tvl1 parameter 'iterations' must be an int in \[1, 1000\], "
                                         r"got 1000000"):
        check_metadata(meta)


@pytest.mark.parametrize("setting, value", [("warps", 10 ** 6), ("levels", 10 ** 6), ("iterations", 0)])
def test_every_tvl1_work_setting_is_bounded(setting, value):
    with pytest.raises(ValueError, match=rf"'{setting}' must be an int in \[1, \d+\], got {value}"):
        build_flow("tvl1", **{setting: value})


def test_legal_settings_that_add_up_to_absurd_work_are_refused():
    # each setting within its own bound, together 100x the bound on the work per frame pair
    meta = bundled_metadata()
    meta = meta.model_copy(update={"flow": {**meta.flow, "levels": 12, "scale_step": 0.9, "warps": 20,
                                            "iterations": 1000}})
    with pytest.raises(ValueError, match=rf"pixel-iterations per frame pair .*over the bound {MAX_FLOW_WORK:,}"):
        check_metadata(meta)
    assert build_flow("default").work(128, 192) * 100 <= MAX_FLOW_WORK  # the bundled flow: 1/100 of it


@pytest.mark.parametrize("field, value", [("smoothing", 10 ** 7), ("components", 1000)])
def test_absurd_scoring_settings_are_refused(field, value):
    meta = bundled_metadata()
    update = {field: value} if field == "smoothing" else {"components": meta.components * value}
    with pytest.raises(ValueError, match=rf"{field} = \d+ is outside the bounds"):
        check_metadata(meta.model_copy(update=update))


def test_a_network_cannot_be_built_with_an_absurd_input():
    with pytest.raises(ValueError, match="clip_len = 1000 is outside the bounds"):
        build_model("amsrc", clip_len=1000, channels=1, height=32, width=48, base_width=4)
