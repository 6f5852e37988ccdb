"""Real servers for tests: ``amvad serve`` as a subprocess on a free loopback port (with an httpx client
and helpers for its cameras and WebSocket), and GStreamer's RTSP server driven by the system python."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A running ``amvad serve`` subprocess and an httpx client with the API key. Served over TLS (``ca``:
    its certificate), the client trusts that certificate and nothing else."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path, ca: Path | None = None) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.base = f"{'https' if ca else 'http'}://127.0.0.1:{port}"
        self.ssl = ssl.create_default_context(cafile=str(ca)) if ca else None
        self.http = httpx.Client(base_url=self.base, headers={"X-API-Key": API_KEY}, timeout=60,
                                 verify=self.ssl or True)

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


def start_service(tmp: Path, model: Path, extra: dict | None = None, python: str | None = None) -> Service:
    """``python``: another interpreter whose installed amvad to run (started outside the repository)."""
    port = free_port()
    cfg = {"model": str(model), "api_key": API_KEY, "state_dir": str(tmp / "state"),
           "media_dirs": [str(tmp.parent)],  # pytest's base folder: the sample clips of every test
           "limits": {"max_upload_mb": 0.5, "max_clip_seconds": 60},
           "ingest": {"open_timeout_s": 3, "read_timeout_s": 2, "backoff_initial_s": 0.3,
                      "backoff_max_s": 2, "stats_save_s": 1},
           **(extra or {})}
    (tmp / "service.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp / "service.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({} if python else {"PYTHONPATH": str(REPO)})}
    proc = subprocess.Popen([python or sys.executable, "-m", "amvad.cli", "serve", "--config",
                             str(tmp / "service.yaml"), "--port", str(port)], cwd=tmp if python else REPO, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    svc = Service(proc, port, log, Path(cfg["tls_cert"]) if cfg.get("tls_cert") else None)

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


@contextlib.contextmanager
def running_service(tmp: Path, model: Path | str, extra: dict | None = None,
                    python: str | None = None) -> Iterator[Service]:
    """:func:`start_service` for a ``with`` block: the server is stopped whatever happens inside."""
    svc = start_service(tmp, model, extra, python)
    try:
        yield svc
    finally:
        svc.http.close()
        stop_process(svc.proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(Path(__file__).with_name("rtsp_server.py")),
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


def ws_url(service: Service, camera: str, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"api_key": API_KEY, **params}.items())
    return f"ws://127.0.0.1:{service.port}/v1/cameras/{camera}/ws?{query}"


def receive(ws, n: int, timeout: float = 20) -> list[dict]:
    """The next ``n`` JSON messages of a WebSocket, within ``timeout`` seconds in all."""
    deadline, out = time.monotonic() + timeout, []
    while len(out) < n:
        out.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    return out


def add_camera(service: Service, cam_id: str, url: str) -> dict:
    r = service.http.post("/v1/cameras", json={"id": cam_id, "url": url})
    assert r.status_code == 201, r.text
    return r.json()
