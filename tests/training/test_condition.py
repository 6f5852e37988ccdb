"""``training.condition.blur_tolerance``: how soft a picture a model still judges, from its own scores on
its footage blurred along a ladder (the figures stubbed here; tests/training/test_pipeline.py runs it for
real through ``amvad export --condition-on``)."""

from __future__ import annotations

import math

import pytest

from amvad.models.metadata import SPEED_COMPONENT
from amvad.runtime.exported_model import read_metadata
from amvad.training import condition
from amvad.training.condition import BLUR_LADDER, MAX_MIN_SHARPNESS, blur_tolerance
from amvad.training.data import find_clips


@pytest.fixture
def ladder(monkeypatch):
    """sigma -> (share of frames flagged, median sharpness) that the scored footage gives."""
    table: dict[float, tuple[float, float | None]] = {}
    monkeypatch.setattr(condition, "perturb_clip", lambda change, sigma, frames: sigma)
    monkeypatch.setattr(condition, "score_frames", lambda engine, name, sigma: sigma)
    monkeypatch.setattr(condition, "normal_figures", lambda scored, threshold, events: {
        "frames_flagged": table[scored[0]][0], "sharpness_ratio": table[scored[0]][1]})
    return table


def test_the_limit_lies_between_the_mildest_blur_that_flags_and_the_one_before(ladder, tiny_model,
                                                                                synthetic_dataset):
    sources = find_clips(synthetic_dataset, "training")
    ladder.update(zip(BLUR_LADDER, [(0.0, 0.8), (0.02, 0.6), (0.3, 0.4), (1.0, 0.25)]))
    assert blur_tolerance(tiny_model, sources, progress=False) == round(math.sqrt(0.6 * 0.4), 3)
    # a model that judges every blur of the ladder leaves the camera watch's own rule
    ladder.update(zip(BLUR_LADDER, [(0.0, 0.8), (0.0, 0.6), (0.01, 0.4), (0.02, 0.25)]))
    assert blur_tolerance(tiny_model, sources, progress=False) is None
    # one that flags the mildest blur already never holds a picture nearly as sharp as its footage
    ladder.update(zip(BLUR_LADDER, [(0.5, 0.8), (1.0, 0.6), (1.0, 0.4), (1.0, 0.25)]))
    assert blur_tolerance(tiny_model, sources, progress=False) == MAX_MIN_SHARPNESS
    # and without the sharpness measured (no conditioning) there is nothing to compare against
    ladder.update(zip(BLUR_LADDER, [(0.5, None)] * 4))
    assert blur_tolerance(tiny_model, sources, progress=False) is None


def test_a_limit_is_measured_again_without_the_one_it_had(monkeypatch, tiny_model, synthetic_dataset, tmp_path):
    model = tmp_path / "m.onnx"
    condition.add_conditioning(tiny_model, model, synthetic_dataset, progress=False)
    condition.rewrite_metadata(model, model, conditioning=read_metadata(model).conditioning.model_copy(
        update={"min_sharpness": 0.45}))
    seen = []

    def measure(path, sources, **kw):  # frames held under an old limit would not count as flagged
        seen.append(read_metadata(path).conditioning.min_sharpness)
        return 0.3
    monkeypatch.setattr(condition, "blur_tolerance", measure)
    meta = condition.set_blur_limit(model, find_clips(synthetic_dataset, "training"), progress=False)
    assert seen == [None] and meta.conditioning.min_sharpness == 0.3


def test_a_flow_span_is_set_with_the_statistics_taken_under_it(tiny_model, synthetic_dataset, tmp_path):
    # a bad span is refused before any footage is read
    with pytest.raises(ValueError, match="span"):
        condition.add_conditioning(tiny_model, tmp_path / "bad.onnx", synthetic_dataset, flow_span=0, progress=False)
    assert not (tmp_path / "bad.onnx").exists()
    # given the same model conditioned as it is and with each flow the mean of the last three
    plain, spanned = tmp_path / "plain.onnx", tmp_path / "span3.onnx"
    condition.add_conditioning(tiny_model, plain, synthetic_dataset, progress=False)
    meta = condition.add_conditioning(tiny_model, spanned, synthetic_dataset, flow_span=3, progress=False)
    # then the span is in the served flow spec and the score statistics are those of the averaged flows
    assert read_metadata(spanned).flow == {**read_metadata(plain).flow, "span": 3} == meta.flow
    assert [c.mean for c in meta.components] != [c.mean for c in read_metadata(plain).components]


def test_a_speed_component_is_added_with_its_statistics_and_taken_away_again(tiny_model, synthetic_dataset,
                                                                             tmp_path):
    # a negative weight is refused before any footage is read
    with pytest.raises(ValueError, match="speed-weight"):
        condition.add_conditioning(tiny_model, tmp_path / "bad.onnx", synthetic_dataset, speed_weight=-1,
                                   progress=False)
    assert not (tmp_path / "bad.onnx").exists()
    plain, speed, again = tmp_path / "plain.onnx", tmp_path / "speed.onnx", tmp_path / "again.onnx"
    base = condition.add_conditioning(tiny_model, plain, synthetic_dataset, progress=False)
    meta = condition.add_conditioning(tiny_model, speed, synthetic_dataset, speed_weight=2.0, progress=False)
    # the runtime's component comes last, with the weight asked for and the footage's own statistics
    assert meta.speed is not None and [c.name for c in meta.components] == [
        *(c.name for c in base.components), SPEED_COMPONENT]
    last = meta.components[-1]
    assert last.weight == 2.0 and last.mean > 0 and last.std > 1e-6 and (last.mean, last.std) != (0.0, 1.0)
    assert [c.model_dump() for c in meta.graph_components] == [c.model_dump() for c in base.components]
    assert meta.threshold != base.threshold and meta.training["config"]["score"]["speed_weight"] == 2.0
    # conditioned again it keeps the component unless told; weight 0 takes it away, as if never there
    assert condition.add_conditioning(speed, again, synthetic_dataset, progress=False).speed == meta.speed
    gone = condition.add_conditioning(speed, again, synthetic_dataset, speed_weight=0, progress=False)
    assert gone.speed is None and gone.components == base.components and gone.threshold == base.threshold
