"""Session fixtures shared by all test packages: synthetic data, a tiny trained model, a sample H.264
clip, a running ``amvad serve`` and a GStreamer RTSP server. Plain helpers live in ``tests/support``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.support.servers import (
    RtspServer,
    rtsp_available,
    start_service,
    stop_process,
)
from tests.support.synthetic import render_clip, tiny_config, write_clip, write_mp4
from training.config import load_config
from training.export import export
from training.train import train


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
def tiny_model_b(synthetic_dataset, tmp_path_factory) -> Path:
    """A second tiny model (comemory, same input size as ``tiny_model``): another file for model swaps."""
    out = tmp_path_factory.mktemp("tiny_model_b")
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(synthetic_dataset, out / "run", "comemory")))
    path = out / "tiny-b.onnx"
    export(train(load_config(cfg_path), progress=False), path)
    return path


@pytest.fixture(scope="session")
def sample_mp4(tmp_path_factory) -> Path:
    """30 frames at 10 fps; a bright square crosses fast from frame 15 on."""
    return write_mp4(tmp_path_factory.mktemp("clips") / "sample.mp4",
                     render_clip(30, speed=1.0, seed=21, fast_from=15))


@pytest.fixture(scope="session")
def service(tiny_model, tmp_path_factory):
    svc = start_service(tmp_path_factory.mktemp("service"), tiny_model)
    yield svc
    svc.http.close()
    stop_process(svc.proc)


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
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env={**os.environ, "LANG": "C"})
        yield b
        b.close()
