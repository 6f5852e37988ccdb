"""Events people act on, against real servers: a camera on the bundled model replays the Ped2 sample (a
cyclist enters at frame 61). A real MQTT broker (Debian's mosquitto) gets Home Assistant discovery, the
event and throttled scores; a real local HTTP receiver gets the signed webhook within 1 s of the event's
start, and again after answering 500 twice; the event's clip and snapshot are written; feedback and the
event survive a restart."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import av
import cv2
import numpy as np
import pytest
from websockets.sync.client import connect

from amvad.service.config import SAMPLES_DIR
from tests.support.notify import Receiver, Subscriber, mosquitto
from tests.support.servers import API_KEY, receive, running_service, stop_process, ws_url

pytestmark = pytest.mark.integration
SECRET = "hook-secret"
ROLL_S = 2.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with mosquitto(tmp_path_factory.mktemp("mqtt")) as port:
        yield port


@pytest.fixture(scope="module")
def world(broker, tmp_path_factory):
    """The service with webhook + MQTT, a subscriber, and one camera whose cyclist raises an event."""
    tmp = tmp_path_factory.mktemp("events")
    receiver, sub = Receiver(failures=2), Subscriber(broker)
    extra = {"media_dirs": [str(SAMPLES_DIR)],
             "events": {"pre_roll_s": ROLL_S, "post_roll_s": ROLL_S},
             "notify": {"webhooks": [{"url": f"http://127.0.0.1:{receiver.server_port}/hook", "secret": SECRET,
                                      "on": ["start"]}],
                        "mqtt": {"host": "127.0.0.1", "port": broker}}}
    with running_service(tmp, "ped2", extra) as svc:
        r = svc.http.post("/v1/cameras", json={"id": "walkway", "url": (SAMPLES_DIR / "ped2_test01.mp4").as_uri()})
        assert r.status_code == 201, r.text
        started_at = None
        with connect(ws_url(svc, "walkway")) as ws:
            deadline = time.monotonic() + 60
            while started_at is None and time.monotonic() < deadline:
                if any(m["event"] == "start" for m in receive(ws, 1)):
                    started_at = time.time()
        assert started_at is not None, "no event started"
        yield {"svc": svc, "receiver": receiver, "sub": sub, "started_at": started_at, "tmp": tmp, "extra": extra}
    sub.stop()
    receiver.shutdown()


def test_signed_webhook_within_1s_and_again_after_two_500s(world):
    receiver, started_at = world["receiver"], world["started_at"]
    deadline = time.monotonic() + 20
    while len(receiver.posts) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(receiver.posts) >= 3, receiver.posts
    first_at, headers, body = receiver.posts[0]
    assert first_at - started_at <= 1.0, first_at - started_at
    want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Amvad-Signature"] == want
    payload = json.loads(body)
    assert payload["camera"] == "walkway" and payload["type"] == "start" and payload["event"]["start"]
    assert payload["snapshot_url"].endswith(f"/v1/cameras/walkway/events/{payload['event']['id']}/snapshot.jpg")
    # the same notification twice more: after two 500s the third attempt got 200, and the metrics say so
    assert [p[2] for p in receiver.posts[:3]] == [body] * 3
    metrics = world["svc"].http.get("/metrics").text
    assert 'vad_notifications_total{channel="webhook",result="retry"} 2.0' in metrics
    assert 'vad_notifications_total{channel="webhook",result="ok"} 1.0' in metrics


def test_mqtt_discovery_event_and_throttled_scores(world):
    sub = world["sub"]
    time.sleep(3)
    topics = {topic for _, topic, _, _ in sub.messages}
    assert "amvad/availability" in topics
    assert [p for _, p in sub.topic("amvad/availability")][-1] == b"online"
    config = json.loads(sub.topic("homeassistant/binary_sensor/amvad_walkway/anomaly/config")[-1][1])
    assert config["state_topic"] == "amvad/walkway/anomaly" and config["availability_topic"] == "amvad/availability"
    sensor = json.loads(sub.topic("homeassistant/sensor/amvad_walkway/score/config")[-1][1])
    assert sensor["state_topic"] == "amvad/walkway/score"
    events = [json.loads(p) for _, p in sub.topic("amvad/walkway/event")]
    assert events and events[0]["type"] == "start" and events[0]["camera"] == "walkway"
    assert b"ON" in [p for _, p in sub.topic("amvad/walkway/anomaly")]
    scores = sub.topic("amvad/walkway/score")
    span = scores[-1][0] - scores[0][0]
    assert len(scores) >= 3 and len(scores) <= span / 1.0 + 2  # at most one a second
    assert "score" in json.loads(scores[-1][1])


def test_live_page_shows_masks_and_takes_feedback(world, browser):
    svc = world["svc"]
    r = svc.http.patch("/v1/cameras/walkway", json={"masks": [[[0.0, 0.0], [0.2, 0.0], [0.2, 0.2]]]})
    assert r.status_code == 200
    svc.wait_for(lambda: any(e["end"] for e in svc.http.get("/v1/cameras/walkway/events").json()), 90,
                 "an event that ended")
    page = browser.new_page()
    try:
        page.goto(f"{svc.base}/?api_key={API_KEY}")
        cam = page.locator('.cam[data-camera="walkway"]')
        cam.locator("svg.masks polygon").wait_for(timeout=15000)  # the masked region is drawn
        assert cam.locator("svg.masks polygon").count() == 1
        button = cam.locator("ul.events li button[data-label=anomaly]").first
        button.wait_for(timeout=15000)
        event_id = int(button.locator("xpath=..").get_attribute("data-event"))
        button.click()
        cam.locator(f'ul.events li[data-event="{event_id}"] .said').wait_for(timeout=15000)
    finally:
        page.close()
    assert svc.http.get(f"/v1/cameras/walkway/events/{event_id}").json()["feedback"] == "anomaly"
    svc.http.patch("/v1/cameras/walkway", json={"masks": []})


def test_clip_snapshot_feedback_and_history_survive_a_restart(world):
    svc = world["svc"]
    # the event ends once the clip loops back to normal frames; its clip is written after the post-roll
    done = svc.wait_for(lambda: [e for e in svc.http.get("/v1/cameras/walkway/events").json()
                                 if e["end"] and e["clip"] and not e["feedback"]], 90, "an event's clip")
    event = done[-1]
    clip = svc.http.get(f"/v1/cameras/walkway/events/{event['id']}/clip.mp4")
    assert clip.status_code == 200 and clip.headers["content-type"] == "video/mp4"
    path = world["tmp"] / "clip.mp4"
    path.write_bytes(clip.content)
    with av.open(str(path)) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    length = times[-1] - times[0] + 0.1
    want = ROLL_S + event["duration_s"] + ROLL_S
    assert abs(length - want) <= 0.5, (length, want)
    snap = svc.http.get(f"/v1/cameras/walkway/events/{event['id']}/snapshot.jpg")
    img = cv2.imdecode(np.frombuffer(snap.content, np.uint8), cv2.IMREAD_COLOR)
    b, g, r = (img[..., i].astype(int) for i in range(3))
    assert img.shape[1] == 360 and ((r - b > 60) | (b - r > 60)).mean() > 0.005  # the overlay's colours
    fb = svc.http.post(f"/v1/cameras/walkway/events/{event['id']}/feedback", json={"label": "normal"})
    assert fb.status_code == 200 and fb.json()["feedback"] == "normal"
    assert 'vad_event_storage_bytes{camera="walkway"}' in svc.http.get("/metrics").text
    # after a restart with the same state, the event, its clip and its feedback are still there
    svc.http.close()
    stop_process(svc.proc)
    with running_service(world["tmp"], "ped2", world["extra"]) as again:
        listed = {e["id"]: e for e in again.http.get("/v1/events", params={"camera": "walkway"}).json()}
        assert listed[event["id"]]["feedback"] == "normal"
        assert again.http.get(f"/v1/cameras/walkway/events/{event['id']}/clip.mp4").content == clip.content
        normal = again.http.get("/v1/events", params={"feedback": "normal"}).json()
        assert [e["id"] for e in normal] == [event["id"]]
        # and the clip marked normal is footage a fit of this camera can use (here: too little on its own)
        r = again.http.post("/v1/models/fit", json={"name": "from-feedback", "feedback_of": "walkway"})
        assert r.status_code == 422 and f"footage too short: {len(times)} frames" in r.json()["error"], r.json()


def test_bad_event_input_is_4xx_json(service, sample_mp4):
    assert service.http.get("/v1/cameras/none/events/1").status_code == 404
    r = service.http.get("/v1/events", params={"since": "last tuesday"})
    assert r.status_code == 422 and "ISO-8601" in r.json()["error"]
    r = service.http.post("/v1/webhooks", json={"url": "ftp://127.0.0.1/x"})
    assert r.status_code == 422 and "http:// or https://" in r.json()["error"]
    r = service.http.post("/v1/webhooks", json={"url": "file:///etc/passwd", "on": ["start"]})
    assert r.status_code == 422
    for masks in ([[[0, 0], [1, 1]]], [[[0, 0], [2, 0], [1, 1]]], "x", [[[0, 0, 0], [1, 0], [1, 1]]]):
        r = service.http.post("/v1/cameras", json={"id": "masked", "url": sample_mp4.as_uri(), "masks": masks})
        assert r.status_code == 422 and r.json()["error"], masks
    add = service.http.post("/v1/cameras", json={"id": "masked", "url": sample_mp4.as_uri(),
                                                 "masks": [[[0, 0], [0.5, 0], [0.5, 0.5]]]})
    try:
        assert add.status_code == 201 and add.json()["masks"] == [[[0, 0], [0.5, 0], [0.5, 0.5]]]
        assert service.http.post("/v1/cameras/masked/events/999/feedback", json={"label": "normal"}).status_code == 404
        assert service.http.patch("/v1/cameras/masked", json={"masks": [[[0, 0]]]}).status_code == 422
        assert service.http.patch("/v1/cameras/masked", json={"masks": []}).json()["masks"] == []
    finally:
        service.http.delete("/v1/cameras/masked")
    hook = service.http.post("/v1/webhooks", json={"url": "https://127.0.0.1:9/x", "secret": "k"})
    assert hook.status_code == 201 and hook.json()["signed"] and "secret" not in hook.json()
    assert service.http.delete(f"/v1/webhooks/{hook.json()['id']}").status_code == 200
    assert service.http.delete(f"/v1/webhooks/{hook.json()['id']}").status_code == 404


@pytest.mark.slow
def test_two_cameras_at_5_fps_with_clips_and_notifications_drop_at_most_1_percent(broker, tmp_path):
    receiver = Receiver(failures=0)
    extra = {"media_dirs": [str(SAMPLES_DIR)], "events": {"pre_roll_s": 5, "post_roll_s": 5},
             "notify": {"webhooks": [{"url": f"http://127.0.0.1:{receiver.server_port}/hook", "secret": SECRET}],
                        "mqtt": {"host": "127.0.0.1", "port": broker}}}
    try:
        with running_service(tmp_path, "ped2", extra) as svc:
            for cam in ("east", "west"):
                r = svc.http.post("/v1/cameras", json={"id": cam, "url": (SAMPLES_DIR / "ped2_test01.mp4").as_uri(),
                                                       "replay_fps": 5})
                assert r.status_code == 201, r.text
            svc.wait_for(lambda: all(svc.http.get(f"/v1/cameras/{c}").json()["state"] == "live"
                                     for c in ("east", "west")), 30, "both cameras live")
            before = {c: svc.http.get(f"/v1/cameras/{c}").json() for c in ("east", "west")}
            time.sleep(45)  # 225 frames per camera: the cyclist's events, their clips and notifications
            after = {c: svc.http.get(f"/v1/cameras/{c}").json() for c in ("east", "west")}
            events = svc.http.get("/v1/events").json()
        frames = sum(after[c]["frames"] - before[c]["frames"] for c in after)
        drops = sum(after[c]["drops"] - before[c]["drops"] for c in after)
        print(f"2 cameras at 5 fps with clips and notifications: {frames} frames, {drops} dropped, "
              f"{len(events)} events, {len(receiver.posts)} webhooks")
        assert events and any(e["clip"] for e in events) and receiver.posts
        assert frames > 400 and drops <= 0.01 * (frames + drops)
    finally:
        receiver.shutdown()
