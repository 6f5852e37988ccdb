"""Scene models against a real ``amvad serve``: the model registry, per-camera models swapped with PATCH,
recordings of a live camera, a fit job on them, and calibration on live footage."""

from __future__ import annotations

import json
import time

import av
import onnx
import pytest
from onnx import TensorProto, helper
from websockets.sync.client import connect

from tests.support.servers import API_KEY, add_camera, receive, running_service, ws_url
from tests.support.synthetic import render_clip, write_mp4

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def svc(tiny_model, tmp_path_factory):
    """A service of its own (these tests register models and record): tiny model, cameras at 10 fps."""
    with running_service(tmp_path_factory.mktemp("scene"), tiny_model) as service:
        yield service


def register(service, path, name: str):
    with open(path, "rb") as fh:
        return service.http.post("/v1/models", params={"name": name}, files={"file": (path.name, fh)})


def wait_state(service, path: str, done, timeout: float, what: str) -> dict:
    return service.wait_for(lambda: (lambda j: j if done(j) else None)(service.http.get(path).json()), timeout, what)


def test_registry_lists_registers_refuses_and_protects_models(svc, tiny_model_b, tmp_path, sample_mp4):
    names = {m["name"]: m for m in svc.http.get("/v1/models").json()}
    assert names["ped2"]["bundled"] and names["ped2"]["method"] == "comemory"
    r = register(svc, tiny_model_b, "lobby-b")
    assert r.status_code == 201 and r.json()["method"] == "comemory" and not r.json()["bundled"]
    assert register(svc, tiny_model_b, "lobby-b").status_code == 409
    assert register(svc, tiny_model_b, "ped2").status_code == 409
    # not ONNX at all, and ONNX without our metadata: 422 naming the problem
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    r = register(svc, junk, "junk")
    assert r.status_code == 422 and "not a usable amvad model" in r.json()["error"]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    bare = tmp_path / "bare.onnx"
    onnx.save(helper.make_model(graph), bare)
    r = register(svc, bare, "bare")
    assert r.status_code == 422 and "metadata" in r.json()["error"]
    # a camera on an unknown model is refused; a model in use cannot be deleted
    r = svc.http.post("/v1/cameras", json={"id": "nomodel", "url": sample_mp4.as_uri(), "model": "nosuch"})
    assert r.status_code == 422 and "unknown model 'nosuch'" in r.json()["error"]
    add = svc.http.post("/v1/cameras", json={"id": "uses-b", "url": sample_mp4.as_uri(), "model": "lobby-b"})
    assert add.status_code == 201 and add.json()["model"] == "lobby-b"
    assert svc.http.delete("/v1/models/lobby-b").status_code == 409
    assert svc.http.delete("/v1/models/ped2").status_code == 409
    assert svc.http.patch("/v1/cameras/uses-b", json={"model": "nosuch"}).status_code == 422
    svc.http.delete("/v1/cameras/uses-b")
    assert svc.http.delete("/v1/models/lobby-b").status_code == 200
    assert "lobby-b" not in {m["name"] for m in svc.http.get("/v1/models").json()}
    assert svc.http.delete("/v1/models/lobby-b").status_code == 404


def test_patch_swaps_a_cameras_model_within_2s_and_no_other_camera_notices(svc, tiny_model_b, sample_mp4):
    assert register(svc, tiny_model_b, "swap-b").status_code == 201
    add_camera(svc, "swapped", sample_mp4.as_uri())
    add_camera(svc, "bystander", sample_mp4.as_uri())
    try:
        with connect(ws_url(svc, "swapped")) as a, connect(ws_url(svc, "bystander")) as b:
            receive(a, 8), receive(b, 8)
            t0 = time.monotonic()
            r = svc.http.patch("/v1/cameras/swapped", json={"model": "swap-b", "threshold": 2.5})
            assert r.status_code == 200 and r.json()["model"] == "swap-b" and r.json()["threshold"] == 2.5
            first_new = None
            while first_new is None and time.monotonic() - t0 < 10:
                m = receive(a, 1)[0]
                if m["model"] == "swap-b" and m["score"] is not None:
                    first_new = time.monotonic() - t0
            bystander = receive(b, 15)
        # then the new model's scores arrive within 2 s, and the other camera's frames kept coming, no gap
        assert first_new is not None and first_new <= 2.0, first_new
        print(f"PATCH model: the new model's first score {first_new:.2f} s after the request")
        ids = [m["frame_id"] for m in bystander]
        assert ids == list(range(ids[0], ids[0] + len(ids))) and {m["model"] for m in bystander} == {
            svc.http.get("/v1/cameras/bystander").json()["model"]}
        # and the change is kept: an API camera's new settings are stored
        stored = json.loads((svc.log.parent / "state" / "api_cameras.json").read_text())["cameras"]
        assert {c["id"]: c["model"] for c in stored}["swapped"] == "swap-b"
    finally:
        svc.http.delete("/v1/cameras/swapped")
        svc.http.delete("/v1/cameras/bystander")


def test_record_then_fit_then_assign(svc, tmp_path, browser):
    # given a live camera (a file replayed fast, 80 frames/s)
    clip = write_mp4(tmp_path / "normal.mp4", render_clip(200, speed=1.0, seed=8))
    assert svc.http.post("/v1/cameras", json={"id": "rec", "url": clip.as_uri(), "replay_fps": 80}).status_code == 201
    try:
        svc.wait_for(lambda: svc.http.get("/v1/cameras/rec").json()["fps"] > 20, 20, "the camera to run")
        # when it is recorded for a second: too little footage to fit on, refused with what is needed
        short = svc.http.post("/v1/cameras/rec/recordings", json={"seconds": 1}).json()
        wait_state(svc, f"/v1/recordings/{short['id']}", lambda j: j["state"] == "done", 30, "a short recording")
        r = svc.http.post("/v1/models/fit", json={"name": "too-short", "recordings": [short["id"]]})
        assert r.status_code == 422 and "footage too short" in r.json()["error"] and "at least 334 frames" in r.json()["error"]
        # and for 7 seconds: H.264 segments that decode
        rec = svc.http.post("/v1/cameras/rec/recordings", json={"seconds": 7})
        assert rec.status_code == 201 and rec.json()["state"] == "recording"
        done = wait_state(svc, f"/v1/recordings/{rec.json()['id']}", lambda j: j["state"] != "recording", 60,
                          "the recording")
        assert done["state"] == "done" and done["frames"] >= 334 and done["bytes"] > 0, done
        seg = svc.http.get(f"/v1/recordings/{done['id']}/segments/0.mp4")
        assert seg.status_code == 200
        (tmp_path / "seg.mp4").write_bytes(seg.content)
        with av.open(str(tmp_path / "seg.mp4")) as c:
            assert c.streams.video[0].codec_context.name == "h264" and sum(1 for _ in c.decode(video=0)) > 100
        assert done["id"] in {r["id"] for r in svc.http.get("/v1/cameras/rec/recordings").json()}
        # then a fit on it runs in its own process, shows progress, and registers the model
        job = svc.http.post("/v1/models/fit", json={"name": "rec-fitted", "recordings": [done["id"]],
                                                    "minutes": 0.1, "base_width": 4, "max_pixels": 1536})
        assert job.status_code == 202, job.text
        assert svc.http.post("/v1/models/fit", json={"name": "second", "recordings": [done["id"]]}).status_code == 429
        page = browser.new_page()  # the live page lists the fit with its progress
        try:
            page.goto(f"{svc.base}/?api_key={API_KEY}")
            line = page.locator("#fits li", has_text="fit of model rec-fitted:")
            line.wait_for(timeout=15000)
            assert any(w in line.inner_text() for w in ("running", "done"))
        finally:
            page.close()
        seen = set()

        def finished():
            j = svc.http.get(f"/v1/models/fit/{job.json()['id']}").json()
            seen.add((j["progress"] or {}).get("stage"))
            return j if j["state"] != "running" else None
        result = svc.wait_for(finished, 180, "the fit job", interval=0.5)
        assert result["state"] == "done", result
        assert result["model"]["name"] == "rec-fitted" and result["model"]["height"] == 32
        assert result["model"]["version"] == 1
        # its model card says what the service did, not to upload it
        card = svc.http.get("/v1/models/rec-fitted/card.md")
        assert card.status_code == 200 and "Registered by the service as `rec-fitted` version 1" in card.text
        assert "POST /v1/models`" not in card.text and "nothing to upload" in card.text
        assert "training" in seen or "done" in seen
        assert svc.http.patch("/v1/cameras/rec", json={"model": "rec-fitted"}).json()["model"] == "rec-fitted"
        with connect(ws_url(svc, "rec")) as ws:
            svc.wait_for(lambda: any(m["model"] == "rec-fitted" and m["score"] is not None for m in receive(ws, 5)),
                         20, "scores from the fitted model")
        assert svc.http.delete(f"/v1/recordings/{short['id']}").status_code == 200
        assert svc.http.get(f"/v1/recordings/{short['id']}").status_code == 404
    finally:
        svc.http.delete("/v1/cameras/rec")


def test_recording_or_calibrating_a_camera_that_is_not_live_is_409(svc, tmp_path):
    assert svc.http.post("/v1/cameras", json={"id": "dead", "url": (tmp_path / "missing.mp4").as_uri()}).status_code == 201
    try:
        svc.wait_for(lambda: svc.http.get("/v1/cameras/dead").json()["state"] == "failed", 10, "the camera to fail")
        r = svc.http.post("/v1/cameras/dead/recordings", json={"seconds": 5})
        assert r.status_code == 409 and "not delivering frames" in r.json()["error"]
        r = svc.http.post("/v1/cameras/dead/calibrate", json={"seconds": 5})
        assert r.status_code == 409
    finally:
        svc.http.delete("/v1/cameras/dead")


def test_calibration_is_a_job_that_sets_the_threshold_from_live_normal_footage(svc, tmp_path):
    clip = write_mp4(tmp_path / "calm.mp4", render_clip(60, speed=1.0, seed=12))
    add_camera(svc, "calib", clip.as_uri())
    try:
        svc.wait_for(lambda: svc.http.get("/v1/cameras/calib").json()["state"] == "live", 20, "the camera to go live")
        assert svc.http.get("/v1/cameras/calib/calibration").status_code == 404  # none yet
        # a threshold no calibration would choose, so the one it sets is seen to be set
        assert svc.http.patch("/v1/cameras/calib", json={"threshold": 1000}).status_code == 200
        # when a calibration starts: 202 at once with a job, not a request held open for its 5 seconds
        t0 = time.monotonic()
        r = svc.http.post("/v1/cameras/calib/calibrate", json={"seconds": 5, "false_alarms_per_hour": 1})
        assert r.status_code == 202 and time.monotonic() - t0 < 2, r.text
        job = r.json()
        assert job["state"] == "running" and job["camera"] == "calib" and job["result"] is None
        # one runs per camera
        busy = svc.http.post("/v1/cameras/calib/calibrate", json={"seconds": 5})
        assert busy.status_code == 409 and job["id"] in busy.json()["error"]
        # then its progress grows while it listens: the fraction of the seconds, frames, seconds of footage
        running = svc.wait_for(lambda: (lambda j: j if j["state"] == "running" and j["progress"]["frames"] >= 10
                                        else None)(svc.http.get("/v1/cameras/calib/calibration").json()),
                               5, "progress")
        assert 0 < running["progress"]["fraction"] < 1 and running["progress"]["footage_seconds"] > 0
        done = wait_state(svc, f"/v1/cameras/calib/calibrations/{job['id']}", lambda j: j["state"] != "running",
                          20, "the calibration")
        assert done["state"] == "done" and done["progress"]["fraction"] == 1 and done["error"] is None, done
        cal = done["result"]
        assert cal["frames"] >= 30 and cal["false_alarms_per_hour_on_this_footage"] <= 1
        assert 4 <= cal["footage_seconds"] <= 6 and cal["threshold"] != cal["threshold_before"]
        assert svc.http.get("/v1/cameras/calib").json()["threshold"] == pytest.approx(cal["threshold"])
        assert [j["id"] for j in svc.http.get("/v1/cameras/calib/calibrations").json()] == [job["id"]]
        # a cancelled calibration sets nothing
        second = svc.http.post("/v1/cameras/calib/calibrate", json={"seconds": 30}).json()
        cancelled = svc.http.delete(f"/v1/cameras/calib/calibrations/{second['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert svc.http.get("/v1/cameras/calib").json()["threshold"] == pytest.approx(cal["threshold"])
        # ?wait=true answers when it ends, with the result (as uploads do)
        waited = svc.http.post("/v1/cameras/calib/calibrate", params={"wait": "true"}, json={"seconds": 5})
        assert waited.status_code == 200 and waited.json()["state"] == "done"
        assert waited.json()["result"]["frames"] >= 30
        assert svc.http.get("/v1/cameras/nosuch/calibrations/x").status_code == 404
    finally:
        svc.http.delete("/v1/cameras/calib")
