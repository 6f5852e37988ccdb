"""Service fixtures: a tiny model trained and exported once per session, H.264 test clips made with
PyAV, a real uvicorn server on a free loopback port, and a real GStreamer RTSP server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import httpx
import numpy as np
import pytest
import yaml

from tests.synthetic import render_clip, tiny_config, write_clip
from training.config import load_config
from training.export import export
from training.train import train

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """Grey uint8 frames -> H.264 MP4 (yuv420p) with PyAV."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(f, cv2.COLOR_GRAY2RGB), format="rgb24")
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="session")
def tiny_model(synthetic_dataset, tmp_path_factory) -> Path:
    """A tiny amsrc model (32x48 grey, clip_len 4) trained one epoch on the synthetic clips."""
    out = tmp_path_factory.mktemp("tiny_model")
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(synthetic_dataset, out / "run", "amsrc")))
    ckpt = train(load_config(cfg_path), progress=False)
    path = out / "tiny.onnx"
    export(ckpt, path)
    return path


@pytest.fixture(scope="session")
def sample_mp4(tmp_path_factory) -> Path:
    """30 frames at 10 fps; a bright square crosses fast from frame 15 on."""
    return write_mp4(tmp_path_factory.mktemp("clips") / "sample.mp4",
                     render_clip(30, speed=1.0, seed=21, fast_from=15))


class Service:
    """A running ``amvad serve`` subprocess and an httpx client with the API key."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.base = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.base, headers={"X-API-Key": API_KEY}, timeout=60)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_service(tmp: Path, model: Path, extra: dict | None = None) -> Service:
    port = free_port()
    cfg = {"model": str(model), "api_key": API_KEY, "state_dir": str(tmp / "state"),
           "limits": {"max_upload_mb": 0.5, "max_clip_seconds": 60},
           "ingest": {"open_timeout_s": 3, "read_timeout_s": 2, "backoff_initial_s": 0.3,
                      "backoff_max_s": 2, "stats_save_s": 1},
           **(extra or {})}
    (tmp / "service.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp / "service.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--config", str(tmp / "service.yaml"),
                             "--port", str(port)], cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    svc = Service(proc, port, log)

    def is_ready():
        if proc.poll() is not None:
            raise AssertionError(f"service exited with {proc.returncode}:\n{svc.logs()}")
        try:
            return svc.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False
    try:
        svc.wait_for(is_ready, 60, "the service to be ready")
    except BaseException:  # never leave a server behind when it does not come up
        svc.http.close()
        stop_process(proc)
        raise
    return svc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def service(tiny_model, tmp_path_factory):
    svc = start_service(tmp_path_factory.mktemp("service"), tiny_model)
    yield svc
    svc.http.close()
    stop_process(svc.proc)


def rtsp_available() -> str | None:
    """None when the system python can run GStreamer's RTSP server, else the reason it cannot."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    res = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                          "from gi.repository import GstRtspServer"], capture_output=True, text=True)
    if res.returncode:
        return ("GStreamer RTSP server not available for /usr/bin/python3 (apt-get install "
                "gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-{base,good,bad,ugly} "
                f"gstreamer1.0-libav): {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ''}")
    return None


class RtspServer:
    """Start/stop a looping RTSP stream at rtsp://127.0.0.1:PORT/cam (the port survives restarts)."""

    def __init__(self, frames: Path, fps: int = 10) -> None:
        self.frames, self.fps, self.port = frames, fps, free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(Path(__file__).parent / "rtsp_server.py"),
                                      "--frames", str(self.frames), "--port", str(self.port),
                                      "--fps", str(self.fps)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if "READY" not in line:
            raise AssertionError(f"RTSP server did not start: {line}{self.proc.stdout.read()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def rtsp_server(tmp_path):
    reason = rtsp_available()
    if reason:
        pytest.skip(reason)
    write_clip(tmp_path / "frames", render_clip(40, speed=1.0, seed=5))
    server = RtspServer(tmp_path / "frames")
    server.start()
    yield server
    server.stop()
