"""The service over real HTTP (uvicorn subprocess on a free loopback port): health, auth, clip uploads,
bad uploads, camera CRUD, metrics."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import API_KEY

pytestmark = pytest.mark.integration


def upload(service, data: bytes, name: str = "clip.mp4", **params):
    return service.http.post("/v1/clips", params=params, files={"file": (name, data, "video/mp4")})


def test_health_ready_metrics_are_open_and_the_rest_needs_the_key(service):
    anon = httpx.Client(base_url=service.base)
    assert anon.get("/healthz").json() == {"status": "ok"}
    assert anon.get("/readyz").json()["status"] == "ready"
    assert "vad_stage_seconds" in anon.get("/metrics").text
    for path in ("/v1/cameras", "/", "/v1/clips/x"):
        r = anon.get(path)
        assert r.status_code == 401 and "API key" in r.json()["error"]
    assert anon.get("/v1/cameras", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert service.http.get("/").text.startswith("<!doctype html>")
    assert "/v1/clips" in service.http.get("/openapi.json").json()["paths"]


def test_upload_scores_every_decoded_frame(service, sample_mp4, tiny_model):
    # given a 30-frame H.264 clip, when uploaded with wait=true
    r = upload(service, sample_mp4.read_bytes(), wait="true", heatmaps="true")
    assert r.status_code == 200, r.text
    job = r.json()
    res = job["result"]
    # then there is one score per decoded frame, null for the warm-up frames (clip_len 4)
    assert job["status"] == "done" and job["progress"] == 1.0 and res["frames"] == 30
    assert len(res["scores"]) == 30 and res["scores"][:3] == [None] * 3
    assert all(isinstance(s, float) for s in res["scores"][3:])
    assert res["fps"] == 10 and isinstance(res["threshold"], float) and res["warmup_frames"] == 3
    assert res["anomaly"][:3] == [None] * 3 and all(isinstance(a, bool) for a in res["anomaly"][3:])
    assert all(len(v) == 30 and v[:3] == [None] * 3 for v in res["components"].values())
    assert isinstance(res["events"], list) and res["heatmap_frames"] == list(range(3, 30))
    # and the status, plot and a heatmap frame can be fetched afterwards
    assert service.http.get(f"/v1/clips/{job['id']}").json()["result"]["scores"] == res["scores"]
    png = service.http.get(f"/v1/clips/{job['id']}/plot.png")
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    jpg = service.http.get(f"/v1/clips/{job['id']}/frames/10/heatmap.jpg")
    assert jpg.headers["content-type"] == "image/jpeg" and jpg.content[:2] == b"\xff\xd8"
    assert service.http.get(f"/v1/clips/{job['id']}/frames/1/heatmap.jpg").status_code == 404


def test_upload_without_wait_is_a_job_with_progress(service, sample_mp4):
    r = upload(service, sample_mp4.read_bytes())
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running", "done")
    job_id = r.json()["id"]
    done = service.wait_for(lambda: service.http.get(f"/v1/clips/{job_id}").json()["status"] == "done", 30,
                            "the clip job")
    assert done
    assert service.http.get("/v1/clips/nope").status_code == 404


@pytest.mark.parametrize("case, status, message", [
    ("empty", 422, "empty"), ("text", 422, "not a readable video"),
    ("truncated", 422, "not a readable video"),
    ("oversized", 413, "limit"), ("no_file_field", 400, "'file'")])
def test_bad_uploads_get_4xx_json_and_the_service_goes_on(service, sample_mp4, case, status, message):
    data = sample_mp4.read_bytes()
    if case == "no_file_field":
        r = service.http.post("/v1/clips", data={"other": "x"})
    else:
        body = {"empty": b"", "text": b"hello, this is not a video\n" * 20, "truncated": data[: len(data) // 2],
                "oversized": b"\0" * (600 * 1024)}[case]
        r = upload(service, body, wait="true")
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and "amvad-upload" not in r.text
    assert service.http.get("/healthz").status_code == 200


def test_good_upload_after_bad_ones(service, sample_mp4):
    upload(service, b"garbage" * 100, wait="true")
    r = upload(service, sample_mp4.read_bytes(), wait="true")
    assert r.status_code == 200 and len(r.json()["result"]["scores"]) == 30


def test_camera_crud_errors_never_echo_credentials(service):
    secret = "hunter2-secret"
    bad_scheme = service.http.post("/v1/cameras", json={"id": "x", "url": f"ftp://admin:{secret}@h/s"})
    assert bad_scheme.status_code == 422 and "scheme 'ftp' is not allowed" in bad_scheme.json()["error"]
    assert secret not in bad_scheme.text
    malformed = service.http.post("/v1/cameras", json={"id": "x", "url": f"rtsp://a:{secret}@h:port/s"})
    assert malformed.status_code == 422 and secret not in malformed.text
    assert service.http.post("/v1/cameras", json={"id": "bad id!", "url": "rtsp://h/s"}).status_code == 422
    assert service.http.post("/v1/cameras", json={"id": "x", "url": "rtsp://h/s", "extra": 1}).status_code == 422
    # given a camera whose server refuses connections (a closed loopback port) and holds a password
    url = f"rtsp://admin:{secret}@127.0.0.1:9/stream"
    created = service.http.post("/v1/cameras", json={"id": "refused", "url": url})
    assert created.status_code == 201 and created.json()["url"] == "rtsp://***@127.0.0.1:9/stream"
    dup = service.http.post("/v1/cameras", json={"id": "refused", "url": url})
    assert dup.status_code == 409 and "already exists" in dup.json()["error"] and secret not in dup.text
    # then it reconnects with a reason, and the password is nowhere: API, metrics, logs
    cam = service.wait_for(lambda: (c := service.http.get("/v1/cameras/refused").json())["reconnects"] >= 1 and c,
                           15, "a reconnect")
    assert cam["state"] in ("reconnecting", "connecting") and cam["reason"]
    assert secret not in service.http.get("/v1/cameras").text + service.http.get("/metrics").text
    assert 'vad_camera_up{camera="refused"} 0.0' in service.http.get("/metrics").text
    assert service.http.delete("/v1/cameras/refused").json() == {"deleted": "refused"}
    assert secret not in service.logs()
    for method in ("get", "delete"):
        r = getattr(service.http, method)("/v1/cameras/refused")
        assert r.status_code == 404 and "no camera with id 'refused'" in r.json()["error"]
    assert service.http.get("/v1/cameras/refused/events").status_code == 404


def exported_thresholds(service) -> dict[str, float]:
    """vad_anomaly_threshold per camera, as Prometheus scrapes it from /metrics."""
    return {s.labels["camera"]: s.value for f in text_string_to_metric_families(service.http.get("/metrics").text)
            for s in f.samples if s.name == "vad_anomaly_threshold"}


def test_each_camera_exports_its_effective_threshold_until_deleted(service):
    model_threshold = service.http.get("/readyz").json()["threshold"]
    # given a camera with a per-camera threshold override and one with the model's default
    # (closed loopback ports: the pipeline exists whether or not frames arrive)
    for body in ({"id": "strict", "url": "rtsp://127.0.0.1:9/a", "threshold": 0.25},
                 {"id": "default", "url": "rtsp://127.0.0.1:9/b"}):
        assert service.http.post("/v1/cameras", json=body).status_code == 201
    try:
        # then /metrics exports each camera's effective threshold, the one the API reports
        exported = exported_thresholds(service)
        assert exported["strict"] == 0.25 and exported["default"] == pytest.approx(model_threshold)
        assert service.http.get("/v1/cameras/strict").json()["threshold"] == 0.25
    finally:
        for cam in ("strict", "default"):
            service.http.delete(f"/v1/cameras/{cam}")
    # and after DELETE the camera's series is gone, with its other per-camera series
    metrics = service.http.get("/metrics").text
    assert not {"strict", "default"} & exported_thresholds(service).keys()
    assert 'camera="strict"' not in metrics and 'camera="default"' not in metrics
