"""Session fixtures shared by all test packages: synthetic data, a tiny trained model, a sample H.264
clip, a running ``amvad serve`` and a GStreamer RTSP server. Plain helpers live in ``tests/support``."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from amvad.training.config import load_config
from amvad.training.export import export
from amvad.training.train import train
from tests.support.processes import kill_descendants
from tests.support.servers import RtspServer, rtsp_available, running_service
from tests.support.synthetic import render_clip, tiny_config, write_clip, write_mp4


def pytest_collection_modifyitems(items):
    """The minutes-long tests (marked ``slow``) first, the rest in their order: README's command runs the
    suite on two workers, and one of them started last would leave the other idle for its whole length."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def shared_model_cache(tmp_path_factory):
    """One cache of compiled models and flow graphs for the whole run (in-process engines and the services
    the tests start), as one machine keeps one: each flow graph is traced once, not once per service."""
    cache = tmp_path_factory.mktemp("amvad-cache")
    saved = {k: os.environ.get(k) for k in ("AMVAD_CACHE_DIR", "AMVAD_ENGINE__CACHE_DIR")}
    os.environ["AMVAD_CACHE_DIR"] = os.environ["AMVAD_ENGINE__CACHE_DIR"] = str(cache)
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """training/frames/01..02 (normal), testing/frames/01..02 with labelled fast-square anomalies."""
    root = tmp_path_factory.mktemp("synth")
    for c in range(2):
        write_clip(root / "training" / "frames" / f"{c + 1:02d}", render_clip(14, speed=1.0, seed=c))
    labels = []
    for c, fast_from in enumerate((8, 5)):
        n = 14
        write_clip(root / "testing" / "frames" / f"{c + 1:02d}",
                   render_clip(n, speed=1.0, seed=10 + c, fast_from=fast_from))
        labels.append((np.arange(n) >= fast_from).astype(np.int64))
    np.save(root / "frame_labels_synth.npy", np.concatenate(labels)[None])
    return root


def train_tiny_model(root: Path, out: Path, method: str) -> Path:
    """A tiny model of ``method`` (32x48 grey, clip_len 4) trained one epoch on the synthetic clips."""
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(root, out / "run", method)))
    path = out / f"{method}.onnx"
    export(train(load_config(cfg_path), progress=False), path)
    return path


@pytest.fixture(scope="session")
def tiny_model(synthetic_dataset, tmp_path_factory) -> Path:
    """The tiny amsrc model most service tests run."""
    return train_tiny_model(synthetic_dataset, tmp_path_factory.mktemp("tiny_model"), "amsrc")


@pytest.fixture(scope="session")
def tiny_model_b(synthetic_dataset, tmp_path_factory) -> Path:
    """A second tiny model (comemory, same input size as ``tiny_model``): another file for model swaps."""
    return train_tiny_model(synthetic_dataset, tmp_path_factory.mktemp("tiny_model_b"), "comemory")


@pytest.fixture(scope="session")
def sample_mp4(tmp_path_factory) -> Path:
    """30 frames at 10 fps; a bright square crosses fast from frame 15 on."""
    return write_mp4(tmp_path_factory.mktemp("clips") / "sample.mp4",
                     render_clip(30, speed=1.0, seed=21, fast_from=15))


@pytest.fixture(scope="session")
def service(tiny_model, tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("service"), tiny_model) as svc:
        yield svc


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


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright (never `playwright install`), for what a person sees. Per
    module: Playwright's sync API keeps an event loop running, which later ``asyncio.run`` calls refuse."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    # A Chromium that does not answer would hang ``close`` (and the run) for ever: after 30 s it is killed,
    # which ends the close, and after 60 s Playwright's driver too, which ends the driver's stop.
    watchdogs = [threading.Timer(30, kill_descendants, args=("chrom",)),
                 threading.Timer(60, kill_descendants, args=("node",))]
    try:
        with sync_api.sync_playwright() as p:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env={**os.environ, "LANG": "C"})
            yield b
            for w in watchdogs:
                w.start()
            b.close()
    finally:
        for w in watchdogs:
            w.cancel()
