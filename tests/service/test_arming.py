"""Arm / disarm and schedules against a real ``amvad serve`` (uvicorn), a real mosquitto and a real webhook
receiver: a disarmed camera keeps scoring, streaming and counting but raises no event and sends nothing;
armed again it raises events again; the MQTT switch and the live page's toggle change it; a schedule
window and a profile apply at once; bad schedules are refused naming the field; it all survives a restart.

The camera's threshold is far below every score, so each scored frame is anomalous and, armed, an event
starts within a fraction of a second and never ends by itself."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from websockets.sync.client import connect

from tests.support.notify import Receiver, Subscriber, mosquitto
from tests.support.servers import API_KEY, receive, running_service, stop_process, ws_url

pytestmark = pytest.mark.integration
CAM = "porch"
LOW = -1000.0


@pytest.fixture(scope="module")
def world(tiny_model, sample_mp4, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arming")
    with mosquitto(tmp) as port:
        receiver, sub = Receiver(), Subscriber(port, "arming-sub")
        extra = {"events": {"min_duration_s": 0.1, "cooldown_s": 0.5, "clips": False},
                 "notify": {"webhooks": [{"url": f"http://127.0.0.1:{receiver.server_port}/hook"}],
                            "mqtt": {"host": "127.0.0.1", "port": port}}}
        with running_service(tmp, tiny_model, extra) as svc:
            r = svc.http.post("/v1/cameras", json={"id": CAM, "url": sample_mp4.as_uri(), "threshold": LOW})
            assert r.status_code == 201, r.text
            assert r.json()["armed"] is True and r.json()["armed_by"] == "default"
            yield {"svc": svc, "receiver": receiver, "sub": sub, "port": port, "tmp": tmp, "extra": extra,
                   "model": tiny_model}
        sub.stop()
        receiver.shutdown()


def events(svc) -> list[dict]:
    return svc.http.get(f"/v1/cameras/{CAM}/events").json()


def starts(receiver) -> list[dict]:
    return [json.loads(body) for _, _, body in receiver.posts if json.loads(body)["type"] == "start"]


def metric(svc, line_start: str) -> float:
    for line in svc.http.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {line_start}")


def patch(svc, body: dict, status: int = 200) -> dict:
    r = svc.http.patch(f"/v1/cameras/{CAM}", json=body)
    assert r.status_code == status, r.text
    return r.json()


def window_now(**what) -> dict:
    """A window (UTC) that began two minutes ago and ends in ten."""
    now = datetime.now(timezone.utc)
    return {"start": (now - timedelta(minutes=2)).strftime("%H:%M"),
            "end": (now + timedelta(minutes=10)).strftime("%H:%M"), **what}


def test_a_disarmed_camera_scores_but_raises_nothing_and_raises_again_once_armed(world):
    svc, receiver, sub = world["svc"], world["receiver"], world["sub"]
    # given an armed camera with an open event, notified
    svc.wait_for(lambda: [e for e in events(svc) if e["end"] is None], 20, "an open event")
    svc.wait_for(lambda: starts(receiver), 10, "the webhook of its start")
    # when it is disarmed
    body = patch(svc, {"armed": False})
    assert (body["armed"], body["armed_by"]) == (False, "manual") and "manual change" in body["armed_why"]
    # then within a second the open event is closed, saying why
    t0 = time.monotonic()
    closed = svc.wait_for(lambda: (lambda es: es if all(e["end"] for e in es) else None)(events(svc)), 3,
                          "the open event to close")
    assert time.monotonic() - t0 <= 1.5 and closed[0]["note"] == "the camera was disarmed"
    time.sleep(0.5)  # the end's notifications go out
    n_events, n_posts, n_mqtt = len(closed), len(receiver.posts), len(sub.topic(f"amvad/{CAM}/event"))
    frames = metric(svc, f'vad_frames_total{{camera="{CAM}"}}')
    assert metric(svc, f'vad_camera_armed{{camera="{CAM}"}}') == 0
    # and while disarmed its scores still stream (anomalous, no event) and its metrics move
    with connect(ws_url(svc, CAM)) as ws:
        msgs = receive(ws, 20)
    scored = [m for m in msgs if m["score"] is not None]
    assert len(scored) >= 10 and all(m["anomaly"] and m["threshold"] == LOW for m in scored)
    assert all(m["armed"] is False and m["event"] is None for m in msgs)
    assert metric(svc, f'vad_frames_total{{camera="{CAM}"}}') >= frames + 20
    # but no event, webhook or MQTT event went out
    assert len(events(svc)) == n_events and len(receiver.posts) == n_posts
    assert len(sub.topic(f"amvad/{CAM}/event")) == n_mqtt
    # when it is armed again, the anomaly still going on raises an event at once, notified again
    body = patch(svc, {"armed": True})
    assert (body["armed"], body["armed_by"]) == (True, "manual")
    svc.wait_for(lambda: len(events(svc)) == n_events + 1, 3, "a new event")
    svc.wait_for(lambda: len(receiver.posts) > n_posts, 3, "its webhook")
    assert json.loads(receiver.posts[-1][2])["type"] == "start"


def test_the_mqtt_switch_arms_and_disarms_and_its_state_is_retained(world):
    svc, sub, port = world["svc"], world["sub"], world["port"]
    switch = json.loads(sub.topic(f"homeassistant/switch/amvad_{CAM}/armed/config")[-1][1])
    assert switch["command_topic"] == f"amvad/{CAM}/armed/set" and switch["state_topic"] == f"amvad/{CAM}/armed"
    # when Home Assistant (here: any MQTT client) turns the switch off
    sub.client.publish(f"amvad/{CAM}/armed/set", "OFF", qos=1)
    t0 = time.monotonic()
    svc.wait_for(lambda: svc.http.get(f"/v1/cameras/{CAM}").json()["armed"] is False, 3, "disarmed")
    assert time.monotonic() - t0 <= 1.0
    svc.wait_for(lambda: sub.topic(f"amvad/{CAM}/armed")[-1][1] == b"OFF", 3, "the state OFF")
    # then the state is retained: a client connecting now learns it at once
    late = Subscriber(port, "late-sub")
    try:
        got = svc.wait_for(lambda: [m for m in late.messages if m[1] == f"amvad/{CAM}/armed"], 5, "retained state")
        assert got[-1][2] == b"OFF" and got[-1][3] is True
    finally:
        late.stop()
    # a payload it does not understand changes nothing; true arms again
    sub.client.publish(f"amvad/{CAM}/armed/set", "maybe", qos=1)
    time.sleep(0.5)
    assert svc.http.get(f"/v1/cameras/{CAM}").json()["armed"] is False
    sub.client.publish(f"amvad/{CAM}/armed/set", "true", qos=1)
    svc.wait_for(lambda: svc.http.get(f"/v1/cameras/{CAM}").json()["armed"] is True, 3, "armed")
    svc.wait_for(lambda: sub.topic(f"amvad/{CAM}/armed")[-1][1] == b"ON", 3, "the state ON")


def test_schedules_arm_and_select_a_profile_at_once_and_bad_ones_are_refused(world):
    svc = world["svc"]
    # a window covering now disarms at once, and says so
    body = patch(svc, {"timezone": "UTC", "schedules": [window_now(name="away", armed=False)]})
    assert (body["armed"], body["armed_by"]) == (False, "schedule away") and body["timezone"] == "UTC"
    assert [w["name"] for w in body["windows"]] == ["away"] and "schedule away" in body["armed_why"]
    # a manual change after the window began wins until the next window begins
    body = patch(svc, {"armed": True})
    assert (body["armed"], body["armed_by"]) == (True, "manual")
    # a profile that only sets a threshold: in force at once, in the scores and the metrics
    body = patch(svc, {"schedules": [window_now(name="strict", threshold=1234.5)]})
    assert body["threshold"] == 1234.5 and body["profile"]["by"] == "schedule strict"
    with connect(ws_url(svc, CAM)) as ws:
        assert receive(ws, 1)[0]["threshold"] in (LOW, 1234.5)
        assert receive(ws, 3)[-1]["threshold"] == 1234.5
    assert metric(svc, f'vad_anomaly_threshold{{camera="{CAM}"}}') == 1234.5
    # bad schedules: 422 naming the field
    for bad, field in (({"schedules": [window_now(days=["someday"], armed=False)]}, "schedules.0.days.0"),
                       ({"schedules": [{"start": "25:00", "end": "06:00", "armed": False}]}, "schedules.0.start"),
                       ({"timezone": "Mars/Olympus"}, "timezone"),
                       ({"schedules": [window_now(model="nosuch")]}, "schedules.0.model")):
        r = svc.http.patch(f"/v1/cameras/{CAM}", json=bad)
        assert r.status_code == 422 and field in r.json()["error"], (bad, r.text)
    # without schedules the camera's own threshold is back
    body = patch(svc, {"schedules": []})
    assert body["threshold"] == LOW and body["profile"]["by"] == "camera" and body["windows"] == []


def test_the_live_page_toggle_disarms_and_arms(world, browser):
    svc = world["svc"]
    page = browser.new_page()
    try:
        page.goto(f"{svc.base}/?api_key={API_KEY}")
        button = page.locator(f'.cam[data-camera="{CAM}"] button.arm')
        button.wait_for(timeout=10_000)
        page.wait_for_function(f"() => document.querySelector('.cam[data-camera=\"{CAM}\"] button.arm')"
                               ".textContent === 'armed'", timeout=5_000)
        button.click()
        page.wait_for_function(f"() => document.querySelector('.cam[data-camera=\"{CAM}\"] button.arm')"
                               ".textContent === 'disarmed'", timeout=5_000)
        assert svc.http.get(f"/v1/cameras/{CAM}").json()["armed"] is False
        assert page.locator(f'.cam[data-camera="{CAM}"] .armed-by').inner_text() == "(manual)"
        button.click()
        page.wait_for_function(f"() => document.querySelector('.cam[data-camera=\"{CAM}\"] button.arm')"
                               ".textContent === 'armed'", timeout=5_000)
        assert svc.http.get(f"/v1/cameras/{CAM}").json()["armed"] is True
    finally:
        page.close()


def test_arming_and_schedules_survive_a_restart(world):
    svc, sub = world["svc"], world["sub"]
    patch(svc, {"armed": False, "timezone": "Europe/Berlin",
                "schedules": [{"name": "night", "start": "22:00", "end": "06:00", "model": "nosuch-is-refused"}]},
          status=422)
    body = patch(svc, {"armed": False, "timezone": "Europe/Berlin",
                       "schedules": [{"name": "night", "start": "22:00", "end": "06:00", "armed": True}]})
    since = body["armed_since"]
    svc.http.close()
    stop_process(svc.proc)
    with running_service(world["tmp"], world["model"], world["extra"]) as again:
        cam = again.http.get(f"/v1/cameras/{CAM}").json()
        assert cam["armed_since"] == since and cam["timezone"] == "Europe/Berlin"
        assert [s["name"] for s in cam["schedules"]] == ["night"]
        # the manual change came after any night window in force now began: it still holds
        assert (cam["armed"], cam["armed_by"]) == (False, "manual")
        again.wait_for(lambda: sub.topic(f"amvad/{CAM}/armed")[-1][1] == b"OFF", 5, "the state OFF again")
