"""The per-stream pipeline with a real exported model: warm-up, gaps, causal scores and heatmaps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.engine import ExportedModel
from service.events import EventTracker
from service.heatmap import overlay_jpeg
from service.ingest import Frame
from service.pipeline import LIVE, WARMING_UP, StreamPipeline
from service.scoring import StreamScorer
from tests.synthetic import render_clip


@pytest.fixture(scope="module")
def model(tiny_model) -> ExportedModel:
    return ExportedModel(tiny_model, threads=1)


def make_pipeline(model: ExportedModel) -> StreamPipeline:
    meta = model.meta
    return StreamPipeline(model, StreamScorer.from_metadata(meta), EventTracker(threshold=meta.threshold))


def frames(n: int, segment: int = 1, first: int = 0) -> list[Frame]:
    rgb = [cv2.cvtColor(f, cv2.COLOR_GRAY2RGB) for f in render_clip(n, speed=1.0, seed=4)]
    return [Frame("cam", first + i, segment, (first + i) / 10, p) for i, p in enumerate(rgb)]


def test_warm_up_then_scores_match_batch_scoring(model):
    # given a fresh stream, the first clip_len - 1 frames have no score, then every frame is scored
    pipe, t = make_pipeline(model), model.meta.clip_len
    results = [pipe.process(f) for f in frames(12)]
    assert [r.state for r in results] == [WARMING_UP] * (t - 1) + [LIVE] * (12 - t + 1)
    assert all(r.score is None and r.heatmap is None for r in results[:t - 1])
    assert all(isinstance(r.score, float) and np.isfinite(r.score) for r in results[t - 1:])
    assert results[-1].heatmap.shape == (model.meta.height, model.meta.width)
    # and the streamed components equal the batch path (engine.score_clip) on the same frames
    from models.preprocess import to_model_frame
    m = model.meta
    x = np.stack([to_model_frame(f.pixels, height=m.height, width=m.width, channels=m.channels)
                  for f in frames(12)])
    batch = model.score_clip(x)
    np.testing.assert_allclose(np.stack([r.components for r in results[t - 1:]]), batch, rtol=1e-4, atol=1e-4)


def test_gaps_and_reconnects_restart_the_window(model):
    pipe, t = make_pipeline(model), model.meta.clip_len
    for f in frames(t):
        last = pipe.process(f)
    assert last.state == LIVE
    # a dropped frame (id jumps) restarts the window: warming_up, no score spike
    jump = frames(t, first=t + 5)
    assert [pipe.process(f).score is None for f in jump] == [True] * (t - 1) + [False]
    # a new segment (reconnect) with consecutive ids restarts it too
    again = frames(2, segment=2, first=2 * t + 5)
    assert [pipe.process(f).state for f in again] == [WARMING_UP, WARMING_UP]


def test_overlay_is_a_jpeg_of_the_frame_size():
    frame = np.full((72, 96, 3), 120, np.uint8)
    heat = np.zeros((32, 48), np.float32)
    heat[10:20, 20:30] = 1.0
    img = cv2.imdecode(np.frombuffer(overlay_jpeg(frame, heat, vmax=1.0), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (72, 96, 3)
    # the hot region is coloured (red-ish in BGR), the cold region keeps the grey frame
    assert img[34, 50, 2] > img[34, 50, 0] + 40 and abs(int(img[5, 5, 0]) - 120) < 25
    with pytest.raises(ValueError, match="expected"):
        overlay_jpeg(frame[..., 0], heat, vmax=1.0)


def test_camera_restores_running_stats_saved_by_its_previous_run(model, tmp_path):
    import json

    from service.cameras import Camera
    from service.config import CameraConfig, ServiceSettings
    from service.metrics import Metrics
    settings = ServiceSettings(model="unused", state_dir=tmp_path)
    cfg = CameraConfig(id="door", url="file:///nowhere.mp4", threshold=2.5)
    k = len(model.meta.components)
    saved = {"method": model.meta.method, "components": [c.name for c in model.meta.components],
             "stats": {"mean": [1.0] * k, "var": [4.0] * k, "count": 77}}
    (tmp_path / "cameras").mkdir()
    (tmp_path / "cameras" / "door.json").write_text(json.dumps(saved))
    cam = Camera(cfg, model, settings, Metrics())  # threads not started
    assert cam.pipeline.scorer.stats.count == 77 and cam.pipeline.threshold == 2.5
    cam.pipeline.scorer.stats.count = 78
    cam.stop()  # saves
    assert json.loads((tmp_path / "cameras" / "door.json").read_text())["stats"]["count"] == 78
    # stats of another model are ignored
    saved["components"] = ["other"]
    (tmp_path / "cameras" / "door.json").write_text(json.dumps(saved))
    assert Camera(cfg, model, settings, Metrics()).pipeline.scorer.stats.count == 0


def test_decode_stage_times_the_pyav_decode_of_each_frame(model, sample_mp4):
    from service.ingest import iter_frames, open_source
    from service.metrics import Metrics
    metrics = Metrics()
    pipe = StreamPipeline(model, StreamScorer.from_metadata(model.meta), EventTracker(threshold=1.0), metrics)
    with open_source(str(sample_mp4)) as container:
        decoded = list(iter_frames(container, source_id="clip"))
    # given frames decoded by PyAV, each carries the time its decode took
    assert len(decoded) == 30 and all(f.decode_s > 0 for f in decoded)
    for f in decoded:
        pipe.process(f)
    # then the decode histogram has one observation per frame holding at least the PyAV time
    get = metrics.registry.get_sample_value
    assert get("vad_stage_seconds_count", {"stage": "decode"}) == 30
    assert get("vad_stage_seconds_sum", {"stage": "decode"}) >= sum(f.decode_s for f in decoded)
