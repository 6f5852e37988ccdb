"""The CPU container image, built from the Dockerfile with podman and run: it answers /healthz, scores the
bundled sample exactly as a local run of the same model does, runs as a non-root user, keeps its state on
the volume across a restart, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import numpy as np
import pytest

from amvad.runtime.engine import InferenceEngine
from amvad.training.data import ClipSource
from amvad.training.evaluate import score_clip
from tests.support.deploy import REPO
from tests.support.podman import IMAGE, RUN_FLAGS, build_image, ensure_base_image, podman, why_podman_cannot_run
from tests.support.servers import API_KEY, free_port

pytestmark = [pytest.mark.image, pytest.mark.integration, pytest.mark.timeout(2400)]  # builds a base image

SAMPLE = REPO / "service" / "samples" / "ped2_test01.mp4"


class Container:
    """One detached container of the test image with a named state volume, served on a loopback port."""

    def __init__(self) -> None:
        self.name = f"amvad-test-{uuid.uuid4().hex[:8]}"
        self.volume = f"{self.name}-state"
        self.port = free_port()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"X-API-Key": API_KEY},
                                 timeout=120)

    def run(self) -> None:
        podman("run", "-d", "--name", self.name, "--network", "host", *RUN_FLAGS, "-e", f"AMVAD_API_KEY={API_KEY}",
               "-v", f"{self.volume}:/var/lib/amvad", IMAGE, "--host", "127.0.0.1", "--port", str(self.port))

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                healthy = self.http.get("/healthz").status_code == 200
            except httpx.TransportError:  # not listening yet
                healthy = False
            if healthy:
                return
            if self.state()["Status"] == "exited":
                break
            time.sleep(0.5)
        raise AssertionError(f"container not healthy:\n{self.logs()}")

    def state(self) -> dict:
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return (out.stdout + out.stderr)[-4000:]

    def stop(self) -> float:
        """SIGTERM (podman stop waits up to 20 s before SIGKILL); the seconds it took."""
        t0 = time.monotonic()
        podman("stop", "-t", "20", self.name, timeout=60)
        return time.monotonic() - t0

    def remove(self) -> None:
        self.http.close()
        podman("rm", "-f", self.name, check=False)
        podman("volume", "rm", "-f", self.volume, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    reason = why_podman_cannot_run()
    if reason:
        pytest.skip(reason)
    ensure_base_image()
    build_image()
    return IMAGE


@pytest.fixture
def container(image):
    c = Container()
    c.run()
    try:
        c.wait_healthy()
        yield c
    finally:
        c.remove()


def test_image_is_built_with_its_healthcheck_for_a_non_root_user(image):
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    assert "/healthz" in " ".join(info["Healthcheck"]["Test"])  # kept: built with --format docker
    assert info["Config"]["User"] == "amvad"


def test_container_scores_like_a_local_run_keeps_state_and_stops_cleanly(container):
    # PID 1 is the service, running as the image's user
    status = podman("exec", container.name, "cat", "/proc/1/status").stdout
    uid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uid[0] == "10001" and uid[0] != "0", status
    assert "amvad serve" in podman("exec", container.name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")

    # an upload of the bundled sample scores as this machine scores it with the same model
    with SAMPLE.open("rb") as fh:
        r = container.http.post("/v1/clips", params={"wait": "true"}, files={"file": (SAMPLE.name, fh, "video/mp4")})
    assert r.status_code == 200, r.text
    remote = np.array([s for s in r.json()["result"]["scores"] if s is not None])
    engine = InferenceEngine("ped2")
    try:
        local = score_clip(engine, ClipSource("sample", SAMPLE)).stream
    finally:
        engine.close()
    assert len(remote) == len(local) > 100
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-4)

    # a camera added through the API survives a restart of the container (state on the volume)
    r = container.http.post("/v1/cameras", json={"id": "door", "url": "rtsp://127.0.0.1:9/none"})
    assert r.status_code == 201, r.text
    took = container.stop()
    state = container.state()
    assert state["ExitCode"] == 0 and took < 10, (state, took, container.logs())
    podman("start", container.name)
    container.wait_healthy()
    cameras = container.http.get("/v1/cameras").json()
    assert "door" in json.dumps(cameras), cameras

    # SIGTERM stops it cleanly: exit status 0, well before podman's SIGKILL
    took = container.stop()
    state = container.state()
    assert state["ExitCode"] == 0 and not state.get("OOMKilled") and took < 10, (state, took)
    assert "Finished server process" in container.logs()
