"""A camera's own state, without threads: its drop-oldest frame queue, and running statistics that
survive a restart."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.types import Frame
from amvad.service.cameras import Camera
from amvad.service.cameras.source import FrameQueue
from amvad.service.config import CameraConfig, ServiceSettings
from amvad.service.metrics import Metrics


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = InferenceEngine(tiny_model, EngineConfig(device="cpu", flow_threads=1, model_threads=1))
    yield engine
    engine.close()


def frame(i: int) -> Frame:
    return Frame("q", i, 1, float(i), np.zeros((2, 2, 3), np.uint8))


def test_frame_queue_drops_oldest_for_live_sources_and_blocks_for_unpaced_files():
    live = FrameQueue(2)
    assert [live.put(frame(i)) for i in range(3)] == [0, 0, 1]
    assert live.get(0.1).frame_id == 1  # frame 0 was dropped
    # a blocking put waits for room instead of dropping
    q, stop = FrameQueue(1), threading.Event()
    q.put(frame(0), block_until=stop)
    t = threading.Thread(target=q.put, args=(frame(1),), kwargs={"block_until": stop})
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # still waiting: the queue is full
    assert q.get(0.1).frame_id == 0
    t.join(2)
    assert not t.is_alive() and q.get(0.1).frame_id == 1
    # and a stop request releases a blocked put (the frame is discarded)
    q.put(frame(2), block_until=stop)
    t = threading.Thread(target=q.put, args=(frame(3),), kwargs={"block_until": stop})
    t.start()
    stop.set()
    t.join(2)
    assert not t.is_alive() and q.get(0.1).frame_id == 2 and q.get(0.05) is None


def test_camera_restores_running_stats_saved_by_its_previous_run(engine, tmp_path):
    settings = ServiceSettings(model="unused", state_dir=tmp_path)
    cfg = CameraConfig(id="door", url="file:///nowhere.mp4", threshold=2.5)
    k = len(engine.meta.components)
    saved = {"model_sha256": engine.model.sha256, "method": engine.meta.method,
             "components": [c.name for c in engine.meta.components],
             "stats": {"mean": [1.0] * k, "var": [4.0] * k, "count": 77}}
    (tmp_path / "cameras").mkdir()
    (tmp_path / "cameras" / "door.json").write_text(json.dumps(saved))
    cam = Camera(cfg, engine, settings, Metrics())  # threads not started
    assert cam.stream.scorer.stats.count == 77 and cam.stream.threshold == 2.5
    cam.stream.scorer.stats.count = 78
    cam.stop()  # saves
    assert json.loads((tmp_path / "cameras" / "door.json").read_text())["stats"]["count"] == 78
    # saved with the model's content hash: stats of any other model file are ignored (next test)
    assert json.loads((tmp_path / "cameras" / "door.json").read_text())["model_sha256"] == engine.model.sha256


def test_a_swapped_model_never_inherits_the_old_models_statistics(engine, tmp_path):
    # given stats saved by a camera whose model had the same method and component names as the new one
    # (a retrained or fitted model: the swap that left 97 % of frames flagged), but another file
    settings = ServiceSettings(model="unused", state_dir=tmp_path)
    k = len(engine.meta.components)
    saved = {"model_sha256": "0" * 64, "method": engine.meta.method,
             "components": [c.name for c in engine.meta.components],
             "stats": {"mean": [50.0] * k, "var": [1e-6] * k, "count": 5000}}
    (tmp_path / "cameras").mkdir()
    (tmp_path / "cameras" / "door.json").write_text(json.dumps(saved))
    cam = Camera(CameraConfig(id="door", url="file:///nowhere.mp4"), engine, settings, Metrics())
    # then the camera starts from its own model's training statistics
    assert cam.stream.scorer.stats.count == 0
    np.testing.assert_allclose(cam.stream.scorer.stats.mean, [c.mean for c in engine.meta.components])
