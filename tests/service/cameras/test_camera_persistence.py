"""Cameras added through the API survive a real service restart; the stored list keeps the real URL in
a 0600 file that never leaks into responses or logs; YAML cameras win on id conflicts; DELETE forgets."""

from __future__ import annotations

import json
import stat

import pytest

from tests.support.servers import free_port, start_service, stop_process

pytestmark = pytest.mark.integration
SECRET = "s3cret-pw"


def stored(state_dir) -> dict[str, dict]:
    return {c["id"]: c for c in json.loads((state_dir / "api_cameras.json").read_text())["cameras"]}


def test_api_cameras_survive_a_restart(tiny_model, sample_mp4, tmp_path):
    rtsp_url = f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/cam"  # nobody listens: reconnecting
    yard = {"id": "yard", "url": sample_mp4.as_uri()}
    svc = start_service(tmp_path, tiny_model, {"cameras": [yard]})
    try:
        # given cameras added through the API, one with credentials and a threshold, one deleted again
        for body in ({"id": "gate", "url": rtsp_url},
                     {"id": "lobby", "url": sample_mp4.as_uri(), "threshold": 1.5},
                     {"id": "shadow", "url": sample_mp4.as_uri()},
                     {"id": "gone", "url": sample_mp4.as_uri()}):
            r = svc.http.post("/v1/cameras", json=body)
            assert r.status_code == 201, r.text
            assert SECRET not in r.text
        assert svc.http.delete("/v1/cameras/gone").status_code == 200
        # then the stored list holds the API cameras only, with the real URL, readable by the owner only
        state = tmp_path / "state"
        saved = stored(state)
        assert set(saved) == {"gate", "lobby", "shadow"}
        assert saved["gate"]["url"] == rtsp_url and saved["lobby"]["threshold"] == 1.5
        assert stat.S_IMODE((state / "api_cameras.json").stat().st_mode) == 0o600
    finally:
        svc.http.close()
        stop_process(svc.proc)
    logs = svc.logs()
    assert stored(tmp_path / "state").keys() == {"gate", "lobby", "shadow"}  # shutdown forgets nothing

    # when the service restarts with a config that now also declares "shadow"
    svc = start_service(tmp_path, tiny_model,
                        {"cameras": [yard, {"id": "shadow", "url": sample_mp4.as_uri(), "threshold": 9.0}]})
    try:
        cams = {c["id"]: c for c in svc.http.get("/v1/cameras").json()}
        # then the API cameras are back, the deleted one is not, and the config wins on "shadow"
        assert set(cams) == {"yard", "shadow", "gate", "lobby"}
        assert cams["shadow"]["threshold"] == 9.0 and cams["lobby"]["threshold"] == 1.5
        assert cams["gate"]["url"] == "rtsp://***@127.0.0.1:" + rtsp_url.split("@127.0.0.1:")[1]
        assert set(stored(tmp_path / "state")) == {"gate", "lobby"}
        # the restored file camera streams again
        svc.wait_for(lambda: svc.http.get("/v1/cameras/lobby").json()["frames"] > 0, 20, "lobby frames")
        gate = svc.wait_for(lambda: (c := svc.http.get("/v1/cameras/gate").json())["reason"] and c, 10,
                            "the dead RTSP camera to report a reason")
        assert gate["state"] in ("connecting", "reconnecting") and SECRET not in json.dumps(gate)
        assert SECRET not in svc.http.get("/metrics").text
        # and DELETE forgets a restored camera
        assert svc.http.delete("/v1/cameras/gate").status_code == 200
        assert set(stored(tmp_path / "state")) == {"lobby"}
    finally:
        svc.http.close()
        stop_process(svc.proc)
    # the logs of both runs name the camera with its URL redacted, never the password
    logs += svc.logs()
    assert "rtsp://***@127.0.0.1" in logs and "restored: gate, lobby" in logs and SECRET not in logs
