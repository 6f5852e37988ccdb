"""Target: with the bundled model, a 10 fps RTSP camera (Ped2 frames, real GStreamer server) delivers
scored WebSocket messages at >= 8 per second on a 2-core machine."""

from __future__ import annotations

import time

import pytest
from websockets.sync.client import connect

from tests.support.servers import RtspServer, add_camera, receive, rtsp_available, start_service, stop_process, ws_url
from tests.support.synthetic import PED2

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bundled_model_keeps_up_with_a_10fps_rtsp_camera(tmp_path):
    reason = rtsp_available()
    if reason:
        pytest.skip(reason)
    frames = PED2 / "testing" / "frames" / "01"
    if not frames.is_dir():
        pytest.skip(f"UCSD Ped2 not found at {PED2}")
    server = RtspServer(frames, fps=10)
    server.start()
    svc = start_service(tmp_path, "ped2")
    try:
        add_camera(svc, "ped2cam", server.url)
        with connect(ws_url(svc, "ped2cam")) as ws:
            receive(ws, 10, timeout=30)  # connect and warm up
            t0 = time.monotonic()
            msgs = receive(ws, 50, timeout=30)
            rate = 50 / (time.monotonic() - t0)
        print(f"bundled model on a 10 fps RTSP camera: {rate:.1f} scored messages/s")
        assert all(m["score"] is not None for m in msgs[5:])
        assert rate >= 8, f"{rate:.1f} messages/s"
        drops = svc.http.get("/v1/cameras/ped2cam").json()
        print("camera state:", drops)
    finally:
        svc.http.close()
        stop_process(svc.proc)
        server.stop()
