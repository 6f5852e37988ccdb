"""Bounds and clean ends against a real ``amvad serve`` with a real RTSP camera: SIGTERM or DELETE while
a recording runs, a recording started in the connect burst, how many recordings and webhooks the API
creates, an event id out of range, and a calibration on too little footage."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.servers import Service, running_service

pytestmark = pytest.mark.integration


def live_camera(svc: Service, cam: str, url: str) -> None:
    r = svc.http.post("/v1/cameras", json={"id": cam, "url": url})
    assert r.status_code == 201, r.text
    svc.wait_for(lambda: svc.http.get(f"/v1/cameras/{cam}").json()["state"] == "live", 60, f"{cam} to be live")


def wait_recording(svc: Service, rec_id: str, timeout: float = 40) -> dict:
    return svc.wait_for(lambda: (r := svc.http.get(f"/v1/recordings/{rec_id}").json())["state"] != "recording" and r,
                        timeout, "the recording to end")


def test_sigterm_and_delete_while_recording_end_cleanly(tiny_model, rtsp_server, tmp_path):
    with running_service(tmp_path, tiny_model) as svc:
        live_camera(svc, "cam", rtsp_server.url)
        first = svc.http.post("/v1/cameras/cam/recordings", json={"seconds": 60}).json()
        second = svc.http.post("/v1/cameras/cam/recordings", json={"seconds": 60}).json()
        time.sleep(2)
        r = svc.http.delete(f"/v1/recordings/{first['id']}")  # an active recording: stopped, then removed
        assert r.status_code == 200, r.text
        assert svc.http.get(f"/v1/recordings/{first['id']}").status_code == 404
        time.sleep(1)
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        logs = svc.logs()
        assert "Application shutdown complete" in logs
        assert "TypeError" not in logs and "Traceback" not in logs, logs[-3000:]
    with running_service(tmp_path, tiny_model) as again:  # the interrupted recording ends with what it has
        rec = again.http.get(f"/v1/recordings/{second['id']}").json()
        assert rec["state"] == "done" and rec["frames"] > 0, rec


def test_recording_started_in_the_connect_burst_takes_its_rate_from_timestamps(service, rtsp_server):
    # given a camera that was just added: the RTSP server sends what it has buffered in one burst
    r = service.http.post("/v1/cameras", json={"id": "burst", "url": rtsp_server.url})
    assert r.status_code == 201
    try:
        rec = service.wait_for(lambda: (x := service.http.post("/v1/cameras/burst/recordings", json={"seconds": 4}))
                               .status_code == 201 and x.json(), 30, "the camera to accept a recording", 0.05)
        done = wait_recording(service, rec["id"])
        assert done["state"] == "done" and 7 <= done["fps"] <= 13, done  # the stream's 10 frames/s
        assert 25 <= done["frames"] <= 55, done  # about 4 s of it, not a burst
    finally:
        service.http.delete("/v1/cameras/burst")


def test_recordings_and_webhooks_are_bounded(tiny_model, rtsp_server, tmp_path):
    limits = {"limits": {"max_recordings": 2, "max_webhooks": 3, "max_upload_mb": 0.5}}
    with running_service(tmp_path, tiny_model, limits) as svc:
        live_camera(svc, "cam", rtsp_server.url)
        made = [svc.http.post("/v1/cameras/cam/recordings", json={"seconds": 30}) for _ in range(3)]
        assert [r.status_code for r in made] == [201, 201, 429], [r.text for r in made]
        assert "2" in made[2].json()["error"] and made[2].headers["retry-after"]
        hooks = [svc.http.post("/v1/webhooks", json={"url": f"http://127.0.0.1:9/{i}"}) for i in range(4)]
        assert [r.status_code for r in hooks] == [201, 201, 201, 409], [r.text for r in hooks]
        for r in made[:2]:
            assert svc.http.delete(f"/v1/recordings/{r.json()['id']}").status_code == 200


def test_event_ids_out_of_range_are_404_and_the_connection_lives(service):
    for event_id in (10 ** 30, 2 ** 63, 0, -1):
        r = service.http.get(f"/v1/cameras/any/events/{event_id}")
        assert r.status_code == 404 and "no event" in r.json()["error"], (event_id, r.text)
        r = service.http.post(f"/v1/cameras/any/events/{event_id}/feedback", json={"label": "normal"})
        assert r.status_code == 404, (event_id, r.text)
    assert service.http.get("/healthz").status_code == 200  # same keep-alive connection


def test_a_short_calibration_never_goes_below_the_training_quantile(service, rtsp_server):
    r = service.http.post("/v1/cameras", json={"id": "calib", "url": rtsp_server.url})
    assert r.status_code == 201
    try:
        service.wait_for(lambda: service.http.get("/v1/cameras/calib").json()["state"] == "live", 60, "live")
        model_threshold = service.http.get("/v1/cameras/calib").json()["threshold"]
        res = service.http.post("/v1/cameras/calib/calibrate", params={"wait": "true"},
                                json={"seconds": 5}).json()["result"]
        assert res["threshold"] >= res["floor"] == pytest.approx(model_threshold), res
        assert res["frames"] >= 30 and 4 <= res["footage_seconds"] <= 6, res
        assert res["floored"] == (res["threshold_from_footage"] < res["floor"])
        low = service.http.post("/v1/cameras/calib/calibrate", params={"wait": "true"},
                                json={"seconds": 5, "allow_below_training": True}).json()["result"]
        assert low["floor"] is None and low["threshold"] == low["threshold_from_footage"]
    finally:
        service.http.delete("/v1/cameras/calib")
