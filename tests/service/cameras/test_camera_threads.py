"""Live cameras over real servers: a file:// camera feeding WebSocket clients (fast and slow), and a
real RTSP server that is killed and restarted while the service stays healthy."""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import connect

from tests.support.servers import add_camera, receive, ws_url

pytestmark = pytest.mark.integration
FIELDS = {"camera", "frame_id", "timestamp", "score", "anomaly", "state"}


def test_file_camera_websocket_fast_and_slow_clients(service, sample_mp4):
    add_camera(service, "lobby", sample_mp4.as_uri())
    try:
        with connect(ws_url(service, "lobby", heatmap="true")) as fast, connect(ws_url(service, "lobby")) as slow:
            # given one client that reads everything and one that does not read for a while
            msgs = receive(fast, 25)
            # then each message has the fields of the contract, warming up first, then scored
            assert all(FIELDS <= m.keys() and m["camera"] == "lobby" for m in msgs)
            assert msgs[0]["state"] in ("warming_up", "live")
            live = [m for m in msgs if m["state"] == "live"]
            assert live and all(isinstance(m["score"], float) and isinstance(m["anomaly"], bool) for m in live)
            assert all(m["score"] is None for m in msgs if m["state"] == "warming_up")
            assert any(m.get("heatmap", "").startswith("data:image/jpeg;base64,") for m in live)
            ids = [m["frame_id"] for m in msgs]
            assert ids == sorted(ids)
            # and the client that did not read still gets in-order messages, without heatmaps
            backlog = receive(slow, 16, timeout=5)
            assert [m["frame_id"] for m in backlog] == sorted(m["frame_id"] for m in backlog)
            assert "heatmap" not in backlog[0]
            assert service.http.get("/v1/cameras/lobby").json()["ws_clients"] == 2
        metrics = service.http.get("/metrics").text
        assert 'vad_frames_total{camera="lobby"}' in metrics and 'vad_anomaly_score{camera="lobby"}' in metrics
        cam = service.http.get("/v1/cameras/lobby").json()
        assert cam["frames"] >= 25 and cam["fps"] > 5 and cam["url"] == sample_mp4.as_uri()
        heat = service.http.get("/v1/cameras/lobby/heatmap.jpg")
        assert heat.status_code == 200 and heat.content[:2] == b"\xff\xd8"
        assert isinstance(service.http.get("/v1/cameras/lobby/events").json(), list)
        assert len(service.http.get("/v1/cameras/lobby/scores?limit=5").json()) == 5
        # the running statistics are saved per camera while it runs (every stats_save_s = 1 s here)
        stats_file = service.log.parent / "state" / "cameras" / "lobby.json"
        service.wait_for(stats_file.is_file, 10, "the camera's running statistics on disk")
        saved = json.loads(stats_file.read_text())
        assert saved["stats"]["count"] >= 0 and len(saved["stats"]["mean"]) == len(saved["components"])
    finally:
        service.http.delete("/v1/cameras/lobby")
    # and deleting the camera deletes them: the same id added again starts from the training statistics
    assert not stats_file.exists()


def test_websocket_rejects_wrong_key_and_unknown_camera(service):
    with connect(f"ws://127.0.0.1:{service.port}/v1/cameras/none/ws?api_key=wrong") as ws:
        assert "API key" in json.loads(ws.recv(timeout=5))["error"]
    with connect(ws_url(service, "none")) as ws:
        assert "no camera with id 'none'" in json.loads(ws.recv(timeout=5))["error"]


def test_rtsp_camera_scores_and_recovers_after_server_restart(service, rtsp_server):
    add_camera(service, "gate", rtsp_server.url)
    try:
        with connect(ws_url(service, "gate")) as ws:
            # given a 10 fps RTSP stream, scored messages arrive at close to the stream rate
            first = receive(ws, 5, timeout=20)
            t0 = time.monotonic()
            msgs = receive(ws, 30, timeout=20)
            rate = 30 / (time.monotonic() - t0)
            print(f"rtsp rate {rate:.1f} messages/s")
            assert rate >= 8, f"{rate:.1f} messages/s"
            assert any(m["state"] == "live" and m["score"] is not None for m in first + msgs)
            # when the server is killed, the camera reconnects and the service stays healthy
            rtsp_server.stop()
            service.wait_for(lambda: service.http.get("/v1/cameras/gate").json()["state"] == "reconnecting",
                             10, "the camera to notice the dead server")
            assert service.http.get("/healthz").status_code == 200
            assert 'vad_camera_up{camera="gate"} 0.0' in service.http.get("/metrics").text
            # then after a restart, scores resume within 20 s, after a warm-up
            rtsp_server.start()
            t1 = time.monotonic()
            after = []  # messages still in flight from before the kill, a warm-up, then scores again
            while not (any(m["state"] == "warming_up" for m in after) and after[-1]["score"] is not None):
                after += receive(ws, 1, timeout=max(0.1, 20 - (time.monotonic() - t1)))
            assert time.monotonic() - t1 < 20
            assert after[-1]["frame_id"] > msgs[-1]["frame_id"]
        cam = service.http.get("/v1/cameras/gate").json()
        assert cam["state"] == "live" and cam["reconnects"] >= 1
        assert 'vad_camera_reconnects_total{camera="gate"}' in service.http.get("/metrics").text
    finally:
        service.http.delete("/v1/cameras/gate")


def test_frozen_rtsp_server_is_detected_by_the_read_timeout(service, rtsp_server):
    import os
    import signal
    add_camera(service, "frozen", rtsp_server.url)
    try:
        service.wait_for(lambda: service.http.get("/v1/cameras/frozen").json()["state"] == "live", 20,
                         "the camera to go live")
        # when the server stops answering (SIGSTOP: the TCP connection stays open but silent)
        os.kill(rtsp_server.proc.pid, signal.SIGSTOP)
        try:
            # then the read timeout (2 s) turns the stall into a reconnect instead of blocking forever
            cam = service.wait_for(lambda: (c := service.http.get("/v1/cameras/frozen").json())["state"]
                                   == "reconnecting" and c, 10, "the stall to be detected")
            assert cam["seconds_since_last_frame"] >= 1.5
            metrics = service.http.get("/metrics").text
            assert 'vad_seconds_since_last_frame{camera="frozen"}' in metrics
        finally:
            os.kill(rtsp_server.proc.pid, signal.SIGCONT)
    finally:
        service.http.delete("/v1/cameras/frozen")
