"""A stream with a real exported model through the shared engine: warm-up, gaps, causal scores,
heatmaps, pipelining, batching across streams and failures."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from amvad.runtime.conditioning import Conditioner
from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.events import EventConfig
from amvad.runtime.exported_model import read_metadata
from amvad.runtime.preprocess import to_model_frame
from amvad.runtime.scoring import StreamScorer
from amvad.runtime.stream import Stream, results_in_order
from amvad.runtime.types import LIVE, WARMING_UP, Frame
from amvad.runtime.video import iter_frames, open_source
from amvad.runtime.windows import scored_frames, window
from amvad.service.metrics import Metrics
from amvad.training.export import rewrite_metadata
from tests.support.model_files import with_metadata
from tests.support.synthetic import render_clip


@pytest.fixture(scope="module")
def model(tiny_model):
    """The shared engine (named ``model`` as the camera and clip code see it through ``engine.meta``)."""
    engine = InferenceEngine(tiny_model, EngineConfig(device="cpu", flow_threads=1, model_threads=1))
    yield engine
    engine.close()


def make_pipeline(engine: InferenceEngine, metrics: Metrics | None = None) -> Stream:
    return Stream(engine, observer=metrics)


def batch_components(engine: InferenceEngine, fs: list[Frame]) -> np.ndarray:
    """The batch path for the same frames (conditioned as the stream does): the whole clip's flows at once,
    then every window in one model call (runtime/windows.py cuts them)."""
    m = engine.meta
    condition = Conditioner(m.conditioning, m.height, m.width)  # what the stream does to each frame
    x = np.stack([condition(to_model_frame(f.pixels, height=m.height, width=m.width, channels=m.channels))[0]
                  for f in fs])
    flows = engine.model.compute_flows(x)
    wins = [window(x, flows, fid, m.clip_len) for fid in scored_frames(len(x), m.clip_len)]
    return engine.model.run(np.stack([w[0] for w in wins]), np.stack([w[1] for w in wins])).components


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
    # and the streamed components equal the batch path (whole-clip flows, all windows) on the same frames
    np.testing.assert_allclose(np.stack([r.components for r in results[t - 1:]]),
                               batch_components(model, frames(12)), rtol=1e-4, atol=1e-4)


def test_a_flow_span_is_served_as_the_whole_clip_computes_it(model, tiny_model, tmp_path):
    # given the same model with each flow the mean of the last three (a low-bitrate stream's remedy)
    path = tmp_path / "span3.onnx"
    rewrite_metadata(tiny_model, path, flow={**model.meta.flow, "span": 3})
    engine = InferenceEngine(path, EngineConfig(device="cpu", flow_threads=1, model_threads=1))
    try:
        t = engine.meta.clip_len
        # when a stream is cut (a new segment) and goes on, so the span starts again with the window
        fs = frames(10) + frames(10, segment=2, first=10)
        results = [r for f, r in results_in_order(make_pipeline(engine), fs)]
        # then each segment's scores equal the batch path's on that segment (whole-clip flows, averaged)
        for part, got in ((fs[:10], results[:10]), (fs[10:], results[10:])):
            np.testing.assert_allclose(np.stack([r.components for r in got[t - 1:]]), batch_components(engine, part),
                                       rtol=1e-4, atol=1e-4)
        # and they are not the single-pair flows' scores
        assert not np.allclose(batch_components(engine, fs[:10]), batch_components(model, fs[:10]), atol=1e-4)
    finally:
        engine.close()


def test_no_event_starts_before_the_window_is_full(model):
    # given a stream whose every score is over its threshold, from the first scored frame on
    pipe = Stream(model, threshold=-1e9, events=EventConfig(min_duration_s=0.0))
    n = model.meta.smoothing
    assert n >= 2  # the tiny model's window: 2 frames
    live = [r for r in (pipe.process(f) for f in frames(12)) if r.state == LIVE]
    # then every score is flagged, but the event starts on the first score over a full window
    assert all(r.anomaly for r in live)
    assert [r.settled for r in live[:n + 1]] == [False] * (n - 1) + [True, True]
    assert [r.event for r in live[:n + 1]] == [None] * (n - 1) + ["start", None]


def test_pipelined_submission_gives_the_same_results_in_order(model):
    # given frames fed without waiting (flow of t+1 overlapping the model of t), with a gap in the middle
    fs = frames(10) + frames(8, first=20)
    got = list(results_in_order(make_pipeline(model), fs))
    # then results come back in order and equal frame-by-frame processing
    pipe = make_pipeline(model)
    ref = [pipe.process(f) for f in fs]
    assert [f.frame_id for f, _ in got] == [f.frame_id for f in fs]
    assert [r.state for _, r in got] == [r.state for r in ref]
    # (pipelined frames may be batched together, and ONNX Runtime rounds a batch of two a little differently
    # from two batches of one: the same 1e-4 as the batch path above)
    for (_, a), b in zip(got, ref):
        assert (a.score is None) == (b.score is None)
        if a.score is not None:
            assert a.score == pytest.approx(b.score, rel=1e-4, abs=1e-4)


def test_streams_are_batched_together_and_keep_their_own_windows(tiny_model):
    # given an engine that waits up to 50 ms to fill a batch, and three cameras submitting at once
    metrics = Metrics()
    engine = InferenceEngine(tiny_model, EngineConfig(device="cpu", flow_threads=1, model_threads=1,
                                                      max_batch=8, batch_wait_ms=50), metrics)
    try:
        clips = {cam: [Frame(cam, i, 1, i / 10, f.pixels) for i, f in enumerate(frames(9))] for cam in "abc"}
        clips["b"] = [Frame("b", f.frame_id, 1, f.timestamp, np.ascontiguousarray(f.pixels[::-1]))
                      for f in clips["b"]]  # a different scene
        pipes = {cam: make_pipeline(engine, metrics) for cam in clips}
        futures = {cam: [] for cam in clips}
        for i in range(9):
            for cam in clips:
                futures[cam].append(pipes[cam].submit(clips[cam][i]))
        t = engine.meta.clip_len
        for cam, futs in futures.items():
            comps = np.stack([f.result(timeout=30).components for f in futs[t - 1:]])
            # then each camera's scores are those of its own clip alone
            np.testing.assert_allclose(comps, batch_components(engine, clips[cam]), rtol=1e-4, atol=1e-4)
        get = metrics.registry.get_sample_value
        # and the engine ran fewer model batches than frames: frames of different cameras shared batches
        assert get("vad_batch_size_count", {"stage": "model"}) < get("vad_batch_size_sum", {"stage": "model"})
    finally:
        engine.close()


def test_a_failed_batch_fails_its_frames_and_the_stream_restarts(model, monkeypatch):
    pipe, t = make_pipeline(model), model.meta.clip_len
    for f in frames(t):
        assert pipe.process(f).state in (WARMING_UP, LIVE)
    calls = {"n": 0}
    real = model.model.run_tensors

    def broken_once(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated ONNX Runtime failure")
        return real(*args)

    monkeypatch.setattr(model.model, "run_tensors", broken_once)
    # given the model stage fails on the next frame, that frame's future carries the error
    nxt = frames(t + 3)[t:]
    with pytest.raises(RuntimeError, match="simulated"):
        pipe.process(Frame("cam", t, 1, 0.0, nxt[0].pixels))
    # then the engine goes on and the stream restarts its window (warming up) instead of mixing frames
    assert pipe.process(Frame("cam", t + 1, 1, 0.1, nxt[1].pixels)).state == WARMING_UP


def test_io_binding_gives_the_same_outputs_as_a_plain_run(model):
    m = model.meta
    rng = np.random.default_rng(0)
    x = rng.random((2, m.clip_len, m.channels, m.height, m.width), dtype=np.float32)
    o = rng.standard_normal((2, m.clip_len - 1, 2, m.height, m.width)).astype(np.float32)
    import torch
    a, b = model.model.run(x, o), model.model.run_tensors(torch.from_numpy(x), torch.from_numpy(o))
    for name in ("components", "heatmap", "prediction"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        model.model.run_tensors(torch.from_numpy(x[:, :2]), torch.from_numpy(o))


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


def test_the_first_frame_of_a_new_group_of_pictures_keeps_the_score_and_teaches_nothing(model):
    # given a coded stream with a keyframe every 6 frames (ids 0, 6, 12), the frames between predicted
    coded = [dataclasses.replace(f, keyframe=f.frame_id % 6 == 0) for f in frames(16)]
    pipe = make_pipeline(model)
    results = [pipe.process(f) for f in coded]
    # then each keyframe after predicted frames (6, 12) scores what the window held before it, and every
    # other frame scores as a scorer that never saw the keyframe's errors (id 0 opens the stream: scored)
    check_scores(model, coded, results, carried={6, 12})
    assert results[6].score == results[5].score and results[12].score == results[11].score
    assert pipe.scorer.stats.count == sum(r.score is not None for r in results) - 2  # learned from neither
    # and a stream of keyframes only (image folders, MJPEG) scores every frame as usual
    plain = frames(16)
    check_scores(model, plain, [make_pipeline(model).process(f) for f in plain], carried=set())


def check_scores(engine: InferenceEngine, fs: list[Frame], results: list, carried: set[int]) -> None:
    """The stream's scores are those of a fresh scorer fed each frame's components, the frames in
    ``carried`` given the window's score instead."""
    scorer = StreamScorer.from_metadata(engine.meta)
    for f, r in zip(fs, results):
        if r.score is not None:
            want = scorer.update(r.components, carried=f.frame_id in carried)
            assert r.score == pytest.approx(want, abs=1e-9), f.frame_id


def test_decode_stage_times_the_pyav_decode_of_each_frame(model, sample_mp4):
    metrics = Metrics()
    pipe = make_pipeline(model, metrics)
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


def test_a_heavily_coded_stream_starts_from_the_coded_footages_statistics(tiny_model, tmp_path):
    from amvad.runtime.scoring import RunningStats
    from amvad.service.h264 import H264Writer
    from amvad.training.perturbations import get_change, perturb_clip
    from tests.support.scenes import camera_view

    # given a model whose coded start stands apart from its training statistics
    trained = read_metadata(tiny_model).components
    coded = {"min_blockiness": 1.25, "crf": 42.0, "mean": [3 * c.mean + 1 for c in trained],
             "std": [2 * c.std for c in trained]}
    engine = InferenceEngine(with_metadata(tiny_model, tmp_path / "coded.onnx", coded_start=coded),
                             EngineConfig(device="cpu", flow_threads=1, model_threads=1))
    try:
        clean = camera_view(8)
        low_bitrate = list(perturb_clip(get_change("compression"), 42.0, clean, seed=1, writer=H264Writer))

        def start(frames, **kwargs):
            stream = Stream(engine, forget=0.0, **kwargs)  # forget 0: the statistics it started from stay
            assert all(r.score is not None for _, r in list(results_in_order(stream, frames))[engine.meta.clip_len:])
            return stream.scorer.stats.mean

        # a clean picture starts from the training statistics, a low-bitrate one from the coded footage's
        np.testing.assert_allclose(start(clean), [c.mean for c in trained])
        np.testing.assert_allclose(start(low_bitrate), coded["mean"])
        # and a stream resumed from a camera's own statistics keeps them
        own = RunningStats(mean=np.full(len(trained), 0.5), var=np.ones(len(trained)))
        np.testing.assert_allclose(start(low_bitrate, stats=own), 0.5)
    finally:
        engine.close()
