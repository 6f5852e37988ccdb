"""Day and night against a real ``amvad serve`` and a real RTSP camera (GStreamer) whose picture switches
from colour to its infrared look and back: the night profile (a registered model) is in force within
seconds of the switch and says why, the day profile comes back with the colour, a schedule in force
still arms and disarms, the metric follows, bad night profiles are refused with 422 naming the field,
its model cannot be deleted, and the profile and the night mode survive a restart."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.day_night import day, infrared
from tests.support.servers import API_KEY, RtspServer, rtsp_available, running_service, stop_process

pytestmark = pytest.mark.integration
CAM = "street"
HOLD_S = 2.0


def show(folder: Path, frames: list[np.ndarray]) -> None:
    """Replace the RTSP server's frames one file at a time (each atomically: its loop never reads half a
    file), so the stream switches within a frame or two."""
    for i, f in enumerate(frames):
        tmp = folder / f".{i:03d}.jpg"
        cv2.imwrite(str(tmp), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        os.replace(tmp, folder / f"{i:03d}.jpg")


def window_now(**what) -> dict:
    now = datetime.now(timezone.utc)
    return {"start": (now - timedelta(minutes=2)).strftime("%H:%M"),
            "end": (now + timedelta(minutes=10)).strftime("%H:%M"), **what}


def metric(svc, line_start: str) -> float:
    for line in svc.http.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {line_start}")


def camera(svc) -> dict:
    return svc.http.get(f"/v1/cameras/{CAM}").json()


@pytest.fixture(scope="module")
def world(tiny_model, tiny_model_b, tmp_path_factory):
    reason = rtsp_available()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("day_night")
    colour = day(40)
    folder = tmp / "frames"
    folder.mkdir()
    show(folder, colour)
    rtsp = RtspServer(folder)
    rtsp.start()
    try:
        with running_service(tmp, tiny_model, {"events": {"clips": False}}) as svc:
            with open(tiny_model_b, "rb") as fh:
                r = svc.http.post("/v1/models", params={"name": "night-model"}, files={"file": ("n.onnx", fh)})
            assert r.status_code in (200, 201), r.text
            yield {"svc": svc, "rtsp": rtsp, "folder": folder, "colour": colour, "tmp": tmp,
                   "night": [infrared(f) for f in colour], "model": tiny_model}
    finally:
        rtsp.stop()


def test_the_infrared_picture_switches_to_the_night_profile_and_colour_back(world, browser):
    svc, folder = world["svc"], world["folder"]
    # a camera with a night profile and a schedule in force that disarms it and sets a threshold
    r = svc.http.post("/v1/cameras", json={
        "id": CAM, "url": world["rtsp"].url, "timezone": "UTC",
        "schedules": [window_now(name="quiet", armed=False, threshold=1234.5)],
        "night": {"model": "night-model", "hold_s": HOLD_S}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["night"]["mode"] == "day" and body["night"]["model"] == "night-model"
    svc.wait_for(lambda: camera(svc)["night"]["colour_seen"], 20, "the camera to show colour for hold_s")
    cam = camera(svc)
    assert cam["profile"]["by"] == "schedule quiet" and cam["threshold"] == 1234.5
    assert 0.03 <= cam["night"]["colour"] <= 0.15, cam["night"]  # a colour street, through H.264
    assert metric(svc, f'vad_camera_night{{camera="{CAM}"}}') == 0
    # night: the picture turns grey with the infrared tone curve
    t0 = time.monotonic()
    show(folder, world["night"])
    cam = svc.wait_for(lambda: (c := camera(svc))["profile"]["by"] == "ir" and c, 15, "the night profile")
    took = time.monotonic() - t0
    assert took <= HOLD_S + 3, took  # the hold, a frame or two of the server's loop, a second to apply
    assert cam["model"] == "night-model" and cam["profile"]["model"] == "night-model"
    assert cam["profile"]["since"] and "infrared" in cam["profile"]["why"]
    assert cam["night"]["mode"] == "night" and cam["night"]["colour"] < 0.01
    assert (cam["armed"], cam["armed_by"]) == (False, "schedule quiet")  # the schedule still disarms
    assert [w["name"] for w in cam["windows"]] == ["quiet"]
    assert metric(svc, f'vad_camera_night{{camera="{CAM}"}}') == 1
    svc.wait_for(lambda: svc.http.get(f"/v1/cameras/{CAM}/scores?limit=1").json()[-1]["model"] == "night-model",
                 10, "scores from the night model")
    # the live page says so (hover: why)
    page = browser.new_page()
    try:
        page.goto(f"{svc.base}/?api_key={API_KEY}")
        model = page.locator(f'.cam[data-camera="{CAM}"] .model')
        model.wait_for(timeout=10_000)
        page.wait_for_function(f"() => document.querySelector('.cam[data-camera=\"{CAM}\"] .model')"
                               ".textContent === 'night-model (night)'", timeout=5_000)
        assert "infrared" in model.get_attribute("title")
    finally:
        page.close()
    # its model is in use: not deleted
    r = svc.http.delete("/v1/models/night-model")
    assert r.status_code == 409 and CAM in r.text
    # morning: colour is back, and with it the schedule's profile on the day model
    t0 = time.monotonic()
    show(folder, world["colour"])
    cam = svc.wait_for(lambda: (c := camera(svc))["profile"]["by"] == "schedule quiet" and c, 15, "the day profile")
    assert time.monotonic() - t0 <= HOLD_S + 3
    assert cam["threshold"] == 1234.5 and cam["model"] != "night-model" and cam["night"]["mode"] == "day"
    assert metric(svc, f'vad_camera_night{{camera="{CAM}"}}') == 0


def test_bad_night_profiles_are_refused_naming_the_field(world):
    svc = world["svc"]
    for bad, field in (({"night": {"model": "nosuch"}}, "night.model"),
                       ({"night": {"threshold": 3, "grey_below": 0.05, "colour_above": 0.02}}, "night"),
                       ({"night": {"threshold": 3, "detect": "clock"}}, "night.detect"),
                       ({"night": {}}, "night"),
                       ({"night": {"threshold": 3, "hold_s": -1}}, "night.hold_s")):
        r = svc.http.patch(f"/v1/cameras/{CAM}", json=bad)
        assert r.status_code == 422 and field in r.json()["error"], (bad, r.text)
    assert camera(svc)["night"]["model"] == "night-model"  # unchanged


def test_the_night_profile_and_mode_survive_a_restart(world):
    svc, folder = world["svc"], world["folder"]
    body = svc.http.patch(f"/v1/cameras/{CAM}", json={"schedules": [], "night": {"model": "night-model",
                                                                                  "threshold": 77.0,
                                                                                  "hold_s": HOLD_S}})
    assert body.status_code == 200, body.text
    show(folder, world["night"])
    svc.wait_for(lambda: camera(svc)["profile"]["by"] == "ir", 15, "the night profile")
    assert camera(svc)["threshold"] == 77.0
    svc.http.close()
    stop_process(svc.proc)
    with running_service(world["tmp"], world["model"], {"events": {"clips": False}}) as again:
        cam = again.http.get(f"/v1/cameras/{CAM}").json()
        # still night: on the night profile from its first frame, not after a day model's hold
        assert cam["night"]["threshold"] == 77.0 and cam["night"]["mode"] == "night"
        assert (cam["profile"]["by"], cam["model"], cam["threshold"]) == ("ir", "night-model", 77.0)
        # a calibration at night scores the night model: it sets the night profile's threshold, not the day's
        again.wait_for(lambda: again.http.get(f"/v1/cameras/{CAM}").json()["frames"] > 5, 20, "frames")
        r = again.http.post(f"/v1/cameras/{CAM}/calibrate", params={"wait": "true"}, json={"seconds": 5})
        assert r.status_code == 200, r.text
        result = r.json()["result"]
        cam = again.http.get(f"/v1/cameras/{CAM}").json()
        assert result["sets"] == "night.threshold" and result["threshold_before"] == 77.0
        assert cam["night"]["threshold"] == result["threshold"] == cam["threshold"] != 77.0
        assert cam["profile"]["by"] == "ir"
        stored = json.loads((world["tmp"] / "state" / "api_cameras.json").read_text())["cameras"]
        assert next(c for c in stored if c["id"] == CAM)["threshold"] is None  # the day's own: untouched
        # dropping the profile at night brings the camera's own back at once
        body = again.http.patch(f"/v1/cameras/{CAM}", json={"night": None}).json()
        assert body["night"] is None and body["profile"]["by"] == "camera" and body["model"] != "night-model"
