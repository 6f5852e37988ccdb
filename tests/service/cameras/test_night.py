"""The infrared detector on its own (``service/cameras/night.py``): a colour picture that turns grey switches
to night only after ``hold_s`` and back the same way; a dull scene between the two levels never flaps; a
grey-only camera never switches; its state is saved and read back; bad night profiles are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from amvad.service.cameras.night import IrDetector, NightState, load_state, save_state, state_path
from amvad.service.config import CameraConfig, CameraPatch, NightConfig

FPS = 10
COLOUR, GREY, DULL = 0.06, 0.002, 0.015  # a colour street, an infrared picture, a dull scene at dusk


def feed(det: IrDetector, colour: float, seconds: float, t0: float) -> tuple[float, list[float]]:
    """``seconds`` of frames at FPS with ``colour``; the end time and the times the mode switched."""
    switched = []
    n = round(seconds * FPS)
    for i in range(n):
        t = t0 + i / FPS
        if det.update(t, colour):
            switched.append(round(t - t0, 2))
    return t0 + n / FPS, switched


def detector(**kw) -> IrDetector:
    return IrDetector(NightConfig(threshold=5.0, hold_s=3.0, **kw))


def test_a_colour_picture_turning_grey_switches_after_the_hold_and_back():
    det = detector()
    t, switched = feed(det, COLOUR, 5, 0.0)
    assert switched == [] and det.state.colour_seen and not det.night
    # grey for less than the hold: still day
    t, switched = feed(det, GREY, 2.5, t)
    assert switched == [] and not det.night
    t, switched = feed(det, COLOUR, 1, t)
    # grey for longer: night once the picture has been grey for hold_s (frame 31 at 10 fps: 3.0 s after the first)
    t, switched = feed(det, GREY, 10, t)
    assert switched == [3.0] and det.night and det.state.since is not None
    assert det.status()["mode"] == "night" and det.status()["colour"] == GREY
    # colour back: day again after the hold
    t, switched = feed(det, COLOUR, 10, t)
    assert switched == [3.0] and not det.night and det.status()["mode"] == "day"


def test_a_grey_only_camera_never_switches():
    det = detector()
    _, switched = feed(det, GREY, 120, 0.0)
    assert switched == [] and not det.night and not det.state.colour_seen
    # a few colour frames (a glitch) do not make it a colour camera either
    t, _ = feed(det, COLOUR, 1, 120.0)
    _, switched = feed(det, GREY, 60, t)
    assert switched == [] and not det.state.colour_seen


def test_a_dull_scene_between_the_levels_does_not_flap():
    det = detector()
    t, _ = feed(det, COLOUR, 5, 0.0)
    # dusk: chroma hovering around the grey level, dipping under it for 2 of every 3 seconds
    changes = []
    for _ in range(40):
        t, s = feed(det, GREY, 2, t)
        changes += s
        t, s = feed(det, DULL, 1, t)
        changes += s
    assert changes == [] and not det.night
    # and at night a dull frame between the levels does not bring the day back
    t, s = feed(det, GREY, 4, t)
    assert s and det.night
    for _ in range(40):
        t, s = feed(det, DULL, 2.9, t)
        changes += s
        t, s = feed(det, COLOUR, 2.9, t)
        changes += s
    assert changes == [] and det.night


def test_time_going_backwards_or_jumping_counts_at_most_a_second():
    det = detector()
    t, _ = feed(det, COLOUR, 4, 0.0)
    assert det.update(t, GREY) is False                # the hold starts
    assert det.update(t + 100, GREY) is False          # a gap of 100 s counts as 1 s
    assert det.update(t + 50, GREY) is False           # a reconnect restarting the clock counts nothing
    assert det.update(t + 51, GREY) is False and not det.night  # 2 s so far
    assert det.update(t + 52, GREY) is True and det.night
    assert det.update(t + 53, None) is False and det.night      # no measurement: ignored


def test_the_state_is_saved_and_read_back(tmp_path):
    path = state_path(tmp_path, "gate")
    assert path.name == "gate.night" and load_state(path, "gate") is None
    save_state(path, NightState(night=True, colour_seen=True, since=1764600000.0))
    state = load_state(path, "gate")
    assert state == NightState(night=True, colour_seen=True, since=1764600000.0)
    # a camera restarted at night with a grey picture stays on night, and switches back with colour
    det = IrDetector(NightConfig(model="night", hold_s=1.0), state)
    _, s = feed(det, GREY, 5, 0.0)
    assert s == [] and det.night
    path.write_text("{not json")
    assert load_state(path, "gate") is None


def test_bad_night_profiles_are_refused_naming_the_problem():
    with pytest.raises(ValidationError, match="must set model or threshold"):
        NightConfig()
    with pytest.raises(ValidationError, match="grey_below .* must be below colour_above"):
        NightConfig(threshold=3.0, grey_below=0.05, colour_above=0.02)
    with pytest.raises(ValidationError) as err:
        CameraConfig(id="gate", url="rtsp://h/s", night={"threshold": 3.0, "detect": "clock"})
    assert err.value.errors()[0]["loc"] == ("night", "detect")
    with pytest.raises(ValidationError) as err:
        CameraPatch(night={"model": "x", "hold_s": -1})
    assert err.value.errors()[0]["loc"] == ("night", "hold_s")
    assert CameraPatch(night=None).model_fields_set == {"night"}  # null removes the profile
