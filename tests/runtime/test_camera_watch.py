"""The camera watch on what the conditioner really measures: a textured test view (and Ped2's walkway
when it is on the machine) seen at a tiny model's 32x48 and the bundled model's 128x192, with its lens
covered, blinded, blurred, too noisy, its view shifted by a fifth of the frame, its lights switched, and the benign
changes of the robustness battery that must raise nothing. 10 frames/s, the change from 6 s on."""

from __future__ import annotations

import glob

import cv2
import numpy as np
import pytest

from amvad.runtime.camera_watch import CameraWatch, CameraWatchConfig
from amvad.runtime.conditioning import Conditioner, colourfulness, fit_conditioning
from amvad.runtime.preprocess import to_model_frame
from amvad.runtime.types import FrameCondition
from tests.support import scenes
from tests.support.synthetic import PED2, render_clip

FPS, ONSET = 10, 60


def model_frames(frames: list[np.ndarray], h: int, w: int) -> list[np.ndarray]:
    return [to_model_frame(f, height=h, width=w, channels=1) for f in frames]


def watched(frames: list[np.ndarray], change, *, until: int | None = None, size=(32, 48), fitted_on=None,
            conditioned: bool = True, min_sharpness: float | None = None):
    """Run ``frames`` (``change(frame, rng, i)`` applied from ONSET to ``until``) through a conditioner fitted
    on the first 6 s of ``fitted_on`` (default: the same view) and a watch (``min_sharpness``: the model's
    own limit); returns (verdicts, watch)."""
    h, w = size
    spec = fit_conditioning(np.stack(model_frames((fitted_on or frames)[:ONSET:2], h, w))) if conditioned else None
    conditioner = Conditioner(spec, h, w)
    watch = CameraWatch(max_shift_px=None if spec is None else spec.max_shift * min(h, w), min_sharpness=min_sharpness)
    rng, verdicts = np.random.default_rng(0), []
    for i, f in enumerate(frames):
        if i >= ONSET and (until is None or i < until):
            f = change(f, rng, i)
        _, condition = conditioner(to_model_frame(f, height=h, width=w, channels=1))
        verdicts.append(watch.update(i / FPS, i, condition))
    return verdicts, watch


def changes(verdicts) -> list[tuple[int, str, str, str]]:
    return [(i, v.change, v.event.type, v.event.reason) for i, v in enumerate(verdicts) if v.change]


def flicker(f, rng, i):
    return np.clip(f * (1 + rng.uniform(-0.08, 0.08)), 0, 255).astype(np.uint8)


def ramp(f, rng, i):  # a cloud: down to x0.6 over 8 s
    return np.clip(f * (1 - 0.4 * min(1.0, (i - ONSET) / 80)), 0, 255).astype(np.uint8)


def shake(f, rng, i):  # +-3 px per frame
    m = np.float32([[1, 0, rng.integers(-3, 4)], [0, 1, rng.integers(-3, 4)]])
    return cv2.warpAffine(f, m, (f.shape[1], f.shape[0]), borderMode=cv2.BORDER_REFLECT)


def noise(f, rng, i):
    return np.clip(f + rng.normal(0, 8, f.shape), 0, 255).astype(np.uint8)


BENIGN = {"clean": lambda f, rng, i: f, "flicker_8pct": flicker, "cloud_ramp": ramp, "shake_3px": shake,
          "noise_8": noise, "blur_3": lambda f, rng, i: scenes.blurred(f, 3), "lights_x1.15":
          lambda f, rng, i: scenes.lit(f, 1.15)}
TAMPERS = {"covered": lambda f, rng, i: scenes.covered(f, rng), "blinded": lambda f, rng, i: scenes.blinded(f),
           "defocused": lambda f, rng, i: scenes.blurred(f, 12), "moved": lambda f, rng, i: scenes.shifted(f, 0.2),
           "noisy": lambda f, rng, i: np.clip(f + rng.normal(0, 30, f.shape), 0, 255).astype(np.uint8)}


@pytest.mark.parametrize("name", BENIGN)
def test_benign_camera_changes_raise_nothing_and_hold_no_frame(name):
    verdicts, watch = watched(scenes.scene(150), BENIGN[name])
    assert watch.view_matched and watch.baseline is not None
    assert changes(verdicts) == [] and not any(v.hold for v in verdicts)


@pytest.mark.parametrize("reason", TAMPERS)
def test_each_tamper_is_raised_within_5_s_holds_at_once_and_ends_2_s_after_it_clears(reason):
    verdicts, _ = watched(scenes.scene(150), TAMPERS[reason], until=110)
    got = changes(verdicts)
    assert [(c, t, r) for _, c, t, r in got] == [("start", "tamper", reason), ("end", "tamper", reason)], got
    start = next(v.event for v in verdicts if v.change == "start")
    assert start.start_frame == ONSET and (got[0][0] - ONSET) / FPS <= 5.0
    assert start.detail["baseline"]["brightness"] > 0  # why: what was measured beside the baseline
    # scores are held from the second tampered frame (no anomaly can be raised first) until the end
    held = [i for i, v in enumerate(verdicts) if v.hold]
    assert held == list(range(ONSET + 1, got[1][0])) and verdicts[ONSET + 1].restart and verdicts[got[1][0]].restart
    end = verdicts[got[1][0]].event
    assert end.end_frame == 110 and (got[1][0] - 110) / FPS == pytest.approx(2.0, abs=0.15)


@pytest.mark.parametrize("gain", [1.35, 0.7])
def test_a_lighting_step_is_a_scene_change_that_settles_and_rebaselines(gain):
    verdicts, watch = watched(scenes.scene(150), lambda f, rng, i: scenes.lit(f, gain))
    got = changes(verdicts)
    assert [(c, t, r) for _, c, t, r in got] == [("start", "scene_change", "lighting"),
                                                 ("end", "scene_change", "lighting")], got
    end = got[1][0]
    assert (end - ONSET) / FPS <= 4.0 and verdicts[end].rebaseline and not verdicts[end].hold
    assert all(v.hold for v in verdicts[ONSET + 1:end]) and not any(v.hold for v in verdicts[end:])
    lit = verdicts[end].event.detail
    assert lit["brightness"] == pytest.approx(lit["baseline"]["brightness"] * gain, rel=0.05)
    assert watch.baseline.brightness == pytest.approx(lit["brightness"], rel=0.05)  # the new level is the baseline


def test_a_single_bright_frame_holds_one_frame_and_raises_nothing():
    verdicts, _ = watched(scenes.scene(100), lambda f, rng, i: scenes.lit(f, 2.0), until=ONSET + 2)
    assert changes(verdicts) == [] and sum(v.hold for v in verdicts) == 1


def test_moved_only_runs_on_the_view_the_model_was_fitted_on():
    # a model fitted on another view (the bundled model on your street): the shift is no evidence of a move
    other = scenes.scene(150, seed=11)
    verdicts, watch = watched(scenes.scene(150), TAMPERS["moved"], fitted_on=other)
    assert not watch.view_matched and changes(verdicts) == []
    # but a covered lens is seen all the same
    verdicts, _ = watched(scenes.scene(150), TAMPERS["covered"], fitted_on=other)
    assert [c[3] for c in changes(verdicts)] == ["covered"]


def test_a_camera_defocused_from_its_first_frame_is_a_tamper_on_its_fitted_view_only():
    # added (or restarted) while defocused: its baseline is learnt on the blurred picture, so only the fitted
    # footage tells; refocused at 8 s
    h, w, view = 32, 48, scenes.scene(110)

    def run(fitted_on):
        spec = fit_conditioning(np.stack(model_frames(fitted_on[:ONSET:2], h, w)))
        conditioner, watch = Conditioner(spec, h, w), CameraWatch(max_shift_px=spec.max_shift * min(h, w))
        verdicts = []
        for i, f in enumerate(view):
            _, condition = conditioner(to_model_frame(scenes.blurred(f, 12) if i < 80 else f, height=h, width=w,
                                                      channels=1))
            verdicts.append(watch.update(i / FPS, i, condition))
        return verdicts, changes(verdicts), watch

    verdicts, got, watch = run(view)
    assert watch.view_matched
    assert [(c, t, r) for _, c, t, r in got] == [("start", "tamper", "defocused"), ("end", "tamper", "defocused")]
    assert got[0][0] / FPS <= 5.0 and (got[1][0] - 80) / FPS == pytest.approx(2.0, abs=0.15)
    # no frame is scored before the tamper is raised (while the baseline is learnt, then while it is suspected)
    assert all(v.hold for v in verdicts[:got[1][0]]) and not any(v.hold for v in verdicts[got[1][0]:])
    # a model of another view: its footage says nothing about this camera's sharpness; only the frames of the
    # baseline's first seconds wait
    verdicts, got, watch = run(scenes.scene(110, seed=11))
    learnt = next(i for i, v in enumerate(verdicts) if not v.hold)
    assert not watch.view_matched and got == [] and learnt / FPS <= 2.5 and not any(v.hold for v in verdicts[learnt:])


def test_a_picture_softer_than_its_model_judges_is_a_defocused_tamper():
    # a blur the watch lets through by its own rule (sharpness about 0.33 of the fitted footage's at 32x48)
    soft = lambda f, rng, i: scenes.blurred(f, 5)
    verdicts, _ = watched(scenes.scene(150), soft, until=110)
    assert changes(verdicts) == [] and not any(v.hold for v in verdicts)
    # is a tamper for a model measured not to judge a picture under 0.45 of its footage's sharpness:
    # raised within 5 s, no frame scored meanwhile, over 2 s after the picture is sharp again
    verdicts, watch = watched(scenes.scene(150), soft, until=110, min_sharpness=0.45)
    got = changes(verdicts)
    assert watch.defocus_below == 0.45
    assert [(c, t, r) for _, c, t, r in got] == [("start", "tamper", "defocused"), ("end", "tamper", "defocused")]
    assert (got[0][0] - ONSET) / FPS <= 5.0 and (got[1][0] - 110) / FPS == pytest.approx(2.0, abs=0.15)
    assert all(v.hold for v in verdicts[ONSET + 1:got[1][0]])
    # while a milder blur (about 0.82) is still judged by that model
    verdicts, _ = watched(scenes.scene(150), lambda f, rng, i: scenes.blurred(f, 2), min_sharpness=0.45)
    assert changes(verdicts) == [] and not any(v.hold for v in verdicts)
    # and a limit under the watch's own rule does not weaken it
    assert CameraWatch(min_sharpness=0.05).defocus_below == CameraWatchConfig().defocus_ratio


def test_without_the_models_conditioning_only_the_level_rules_run():
    frames = scenes.scene(150)
    for change, want in ((TAMPERS["covered"], [("start", "tamper")]), (TAMPERS["blinded"], [("start", "tamper")]),
                         (lambda f, rng, i: scenes.lit(f, 1.35), [("start", "scene_change"), ("end", "scene_change")]),
                         (TAMPERS["defocused"], []), (TAMPERS["moved"], [])):
        verdicts, watch = watched(frames, change, conditioned=False)
        assert watch.baseline.sharpness is None and not watch.view_matched
        assert [(c, t) for _, c, t, _ in changes(verdicts)] == want


def test_an_object_crossing_a_dull_scene_is_no_camera_event():
    # the synthetic anomaly clips: a bright square on a dull background triples the picture's contrast
    frames = render_clip(30, speed=1.0, seed=21, fast_from=15) * 4  # a looping file camera
    verdicts, _ = watched(frames, lambda f, rng, i: f)
    assert changes(verdicts) == [] and not any(v.hold for v in verdicts)


def test_a_tamper_during_a_scene_change_ends_the_change_and_finish_ends_the_tamper():
    def lights_then_cover(f, rng, i):
        return scenes.lit(f, 1.35) if i < ONSET + 10 else scenes.covered(f, rng)
    verdicts, watch = watched(scenes.scene(120), lights_then_cover)
    got = [(c, t) for _, c, t, _ in changes(verdicts)]
    assert got == [("start", "scene_change"), ("end", "scene_change"), ("start", "tamper")]
    assert all(v.hold for v in verdicts[ONSET + 1:])
    v = watch.finish(12.0, 120)
    assert v.change == "end" and v.event.type == "tamper" and v.event.end_frame == 120 and watch.open is None


def test_a_disabled_watch_says_nothing():
    watch = CameraWatch(CameraWatchConfig(enabled=False))
    assert not watch.update(0.0, 0, FrameCondition(0.01, 0.001)).hold


@pytest.mark.skipif(not (PED2 / "training" / "frames").is_dir(), reason="UCSD Ped2 not on this machine")
@pytest.mark.parametrize("name", [*TAMPERS, "blur_3", "flicker_8pct", "shake_3px", "noise_8", "lights_x1.35"])
def test_on_ped2_at_the_bundled_models_size(name):
    frames = [cv2.imread(p, cv2.IMREAD_GRAYSCALE)
              for p in sorted(glob.glob(str(PED2 / "training" / "frames" / "01" / "*.jpg")))]
    at_ped2 = {"defocused": lambda f, rng, i: scenes.blurred(f, 6),  # sigma 6 px at 360x240: hard
               "noisy": lambda f, rng, i: scenes.dark_and_noisy(f, i, 0.2)}  # x0.2 light, its gain noise
    change = {**TAMPERS, **BENIGN, "lights_x1.35": lambda f, rng, i: scenes.lit(f, 1.35), **at_ped2}[name]
    verdicts, watch = watched(frames, change, size=(128, 192))
    assert watch.view_matched
    got = [(t, r) for _, c, t, r in changes(verdicts) if c == "start"]
    want = {"covered": [("tamper", "covered")], "blinded": [("tamper", "blinded")],
            "defocused": [("tamper", "defocused")], "moved": [("tamper", "moved")], "noisy": [("tamper", "noisy")],
            "lights_x1.35": [("scene_change", "lighting")]}.get(name, [])
    assert got == want
    starts = [i for i, v in enumerate(verdicts) if v.change == "start"]
    assert all((i - ONSET) / FPS <= 5.0 for i in starts)


def test_an_infrared_switch_is_a_scene_change_and_so_is_the_way_back():
    # a colour camera (a warm tint) that switches to its grey night mode at 6 s and back to colour at 12 s
    def colour(g: np.ndarray) -> np.ndarray:
        return np.clip(np.stack([g * 1.1, g * 0.95, g * 0.7], axis=-1), 0, 255).astype(np.uint8)
    frames = scenes.scene(200)
    conditioner = Conditioner(fit_conditioning(np.stack(model_frames(frames[:ONSET:2], 32, 48))), 32, 48)
    watch, verdicts = CameraWatch(), []
    for i, g in enumerate(frames):
        rgb = cv2.cvtColor(g, cv2.COLOR_GRAY2RGB) if ONSET <= i < 2 * ONSET else colour(g)
        _, condition = conditioner(to_model_frame(rgb, height=32, width=48, channels=1), colour=colourfulness(rgb))
        verdicts.append(watch.update(i / FPS, i, condition))
    got = changes(verdicts)
    assert [(c, t, r) for _, c, t, r in got] == [("start", "scene_change", "infrared"),
                                                 ("end", "scene_change", "infrared"),
                                                 ("start", "scene_change", "daylight"),
                                                 ("end", "scene_change", "daylight")], got
    start = [v.event for v in verdicts if v.change == "start"]
    assert [e.start_frame for e in start] == [ONSET, 2 * ONSET]
    assert start[0].detail["colour"] < 0.01 < start[0].detail["baseline"]["colour"]
