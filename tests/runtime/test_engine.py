"""The engine knows a stream only through ``StreamSink``: one call per submitted frame, in order, and the
window it keeps per stream restarts when asked or after a failure. Each model is held to a time budget, so
one slow model cannot starve another's streams, and an unloaded model leaves nothing queued."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch

from amvad.models.registry import bundled_models
from amvad.runtime.budget import ModelOverBudget, ModelTooSlow
from amvad.runtime.engine import EngineConfig, InferenceEngine, ModelUnloaded
from amvad.runtime.stream import Stream
from amvad.runtime.types import EngineOutput, Frame


class RecordingSink:
    """The smallest stream: remembers every output the engine hands it."""

    def __init__(self) -> None:
        self.outputs: list[tuple[int, EngineOutput]] = []
        self.done = threading.Event()
        self.expected = 0

    def engine_done(self, ticket: int, out: EngineOutput) -> None:
        self.outputs.append((ticket, out))
        if len(self.outputs) == self.expected:
            self.done.set()


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = InferenceEngine(tiny_model, EngineConfig(device="cpu", flow_threads=1, model_threads=1,
                                                      batch_wait_ms=20))
    yield engine
    engine.close()


def test_each_frame_reaches_its_stream_once_in_order(engine):
    m = engine.meta
    rng = np.random.default_rng(0)
    sinks = [RecordingSink(), RecordingSink()]
    lanes = [engine.open_lane(s) for s in sinks]
    n = m.clip_len + 3
    for s in sinks:
        s.expected = n + 1
    for i in range(n + 1):
        for lane in lanes:
            x = torch.from_numpy(rng.random((m.channels, m.height, m.width), dtype=np.float32))
            # frame n starts a new window (as after a gap in the stream)
            engine.submit(lane, x, restart=i == n, ticket=i)
    for s in sinks:
        assert s.done.wait(30)
        assert [t for t, _ in s.outputs] == list(range(n + 1))  # once each, in order
        live = [out.components is not None for _, out in s.outputs]
        assert live == [False] * (m.clip_len - 1) + [True] * (n - m.clip_len + 1) + [False]
        assert s.outputs[-1][1].restarted and not any(o.restarted for _, o in s.outputs[:-1])
        assert all(o.error is None and o.latency_s > 0 and "flow" in o.stage_s for _, o in s.outputs)


def test_two_models_run_side_by_side_each_on_its_own_streams(tiny_model, tiny_model_b):
    # given one engine with two models loaded and a lane on each, submitting at the same time
    engine = InferenceEngine(tiny_model, EngineConfig(device="cpu", flow_threads=1, model_threads=1,
                                                      batch_wait_ms=20))
    try:
        other = engine.load(tiny_model_b)
        assert other is engine.load(tiny_model_b) and len(engine.loaded()) == 2  # loaded once
        m = engine.meta
        rng = np.random.default_rng(1)
        xs = [torch.from_numpy(rng.random((m.channels, m.height, m.width), dtype=np.float32)) for _ in range(6)]
        sinks = {"a": RecordingSink(), "b": RecordingSink()}
        lanes = {"a": engine.open_lane(sinks["a"]), "b": engine.open_lane(sinks["b"], other)}
        for s in sinks.values():
            s.expected = len(xs)
        for i, x in enumerate(xs):
            for lane in lanes.values():
                engine.submit(lane, x, restart=False, ticket=i)
        for s in sinks.values():
            assert s.done.wait(30)
        # then each lane's components are its own model's on the same windows
        last_a, last_b = sinks["a"].outputs[-1][1], sinks["b"].outputs[-1][1]
        frames = torch.stack(xs[-m.clip_len:])[None]
        flows = torch.stack([engine.model.run_flow(xs[i][None], xs[i + 1][None])[0]
                             for i in range(len(xs) - m.clip_len, len(xs) - 1)])[None]
        np.testing.assert_allclose(last_a.components, engine.model.run_tensors(frames, flows).components[0],
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(last_b.components, other.run_tensors(frames, flows).components[0],
                                   rtol=1e-4, atol=1e-4)
        assert len(last_a.components) != len(last_b.components) or not np.allclose(last_a.components,
                                                                                     last_b.components)
    finally:
        engine.close()


class SlowFlow(torch.nn.Module):
    """A model's flow made ``per_frame`` seconds of CPU costlier per frame pair: a model whose batches keep
    exceeding the budget (as a costly flow setting, legal at load on a faster machine, would)."""

    def __init__(self, inner: torch.nn.Module, per_frame: float) -> None:
        super().__init__()
        self.inner, self.per_frame = inner, per_frame

    def forward(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        end = time.thread_time() + self.per_frame * len(prev)
        x = torch.ones(128, 128)
        while time.thread_time() < end:  # CPU work in this thread, as a real flow's would be
            x = x @ x / 128
        return self.inner(prev, nxt)


def cpu_engine(model, **cfg) -> InferenceEngine:
    return InferenceEngine(model, EngineConfig(device="cpu", flow_threads=1, model_threads=1, **cfg))


def test_every_bundled_model_loads_under_the_default_budget():
    engine = cpu_engine("ped2")
    try:
        budget = EngineConfig().model_budget_ms
        for name in sorted(bundled_models()):
            model = engine.load(name)
            # the load-time frame, one-time set-up included (what the budget was checked against)
            print(f"{name}: warm-up frame {model.warmup.describe()}, a warm one {model.measure().describe()}")
        usage = engine.usage()
        assert len(usage) == len(bundled_models()) and engine.describe()["model_budget_ms"] == budget
        assert all(u["flow_ms"] + u["model_ms"] <= budget for u in usage.values())
    finally:
        engine.close()


def test_a_model_over_the_budget_is_refused_at_load(tiny_model, tiny_model_b):
    engine = cpu_engine(tiny_model)
    try:
        engine.budget.budget_s = 0.0001  # 0.1 ms: no model's frame costs that little
        with pytest.raises(ModelTooSlow, match=r"model comemory.onnx needs \d+ ms \(flow \d+ \+ model \d+\) per "
                                               r"frame at 32x48 on cpu, over the engine's per-model budget of "
                                               r"0.1 ms \(engine.model_budget_ms\)") as err:
            engine.load(tiny_model_b)
        assert err.value.status == 422 and len(engine.loaded()) == 1  # nothing of it kept
    finally:
        engine.close()


def frames_of(n: int, seed: int) -> list[Frame]:
    """A textured view panning by a pixel a frame (pure per-frame noise would be a 'noisy' camera, held)."""
    rng = np.random.default_rng(seed)
    view = cv2.GaussianBlur(rng.integers(0, 255, (48, 96, 3), dtype=np.uint8), (0, 0), 2)
    return [Frame("s", i, 0, i / 10, np.ascontiguousarray(view[:, i % 32:i % 32 + 64])) for i in range(n)]


def feed(stream: Stream, frames: list[Frame], fps: float, out: list[dict]) -> None:
    """Submit ``frames`` at ``fps`` as a camera would (blocking while the stream has max_inflight frames in
    the engine), keeping each frame's future and when it was submitted and done."""
    t0 = time.perf_counter()
    for i, frame in enumerate(frames):
        time.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
        rec = {"frame": frame, "submitted": time.perf_counter()}
        rec["future"] = future = stream.submit(frame)
        future.add_done_callback(lambda _, rec=rec: rec.setdefault("done", time.perf_counter()))
        out.append(rec)


def test_a_slow_model_cannot_starve_another_models_stream(tiny_model, tiny_model_b):
    # given two models on one engine with a 100 ms budget, the second made to cost 0.5 s of CPU per frame
    engine = cpu_engine(tiny_model, model_budget_ms=100, budget_suspend_s=1.0)
    try:
        fast, slow = engine.model, engine.load(tiny_model_b)
        slow.run_flow = SlowFlow(slow.run_flow, 0.5)
        a, b = Stream(engine, model=fast), Stream(engine, model=slow)
        # when a camera on each streams 4 s at 10 frames/s
        got_a: list[dict] = []
        got_b: list[dict] = []
        threads = [threading.Thread(target=feed, args=(a, frames_of(40, 1), 10.0, got_a)),
                   threading.Thread(target=feed, args=(b, frames_of(40, 2), 10.0, got_b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # then every frame of the fast model's stream is scored in time: a slow batch costs it at most a
        # hiccup before the slow model is suspended (without the budget, every batch would wait 0.5 s per
        # slow frame in it, 1.5-2 s with the slow stream's frames in flight)
        results = [rec["future"].result(timeout=10) for rec in got_a]
        assert [r.frame_id for r in results] == list(range(40))
        assert sum(r.score is not None for r in results) == 40 - (fast.meta.clip_len - 1)
        latencies = sorted(rec["done"] - rec["submitted"] for rec in got_a)
        assert latencies[len(latencies) // 2] < 0.3 and latencies[-1] < 1.5, latencies
        # and the slow model's frames were dropped, each an engine error its stream reports, and counted
        errors = [rec["future"].exception(timeout=30) for rec in got_b]
        dropped = [e for e in errors if isinstance(e, ModelOverBudget)]
        assert len(dropped) >= 20 and "over the per-model budget of 100 ms" in str(dropped[0])
        assert engine.usage()[slow.sha256]["skipped"] == len(dropped)
        # when the slow model is fast again, it is measured afresh after its suspension and serves again
        slow.run_flow = slow.run_flow.inner
        while engine.usage()[slow.sha256]["suspended_s"] > 0:
            time.sleep(0.1)
        again = [b.submit(f).result(timeout=10) for f in frames_of(8, 3)]
        warm = slow.meta.clip_len - 1
        assert [r.score is not None for r in again] == [False] * warm + [True] * (8 - warm)
    finally:
        engine.close()


class WaitingSink(RecordingSink):
    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected


def test_unloading_a_model_leaves_nothing_of_it_queued(tiny_model, tiny_model_b):
    # given a slow second model (within its budget) with a backlog of 20 frames, one frame per batch
    engine = cpu_engine(tiny_model, max_batch=1)
    try:
        slow = engine.load(tiny_model_b)
        slow.run_flow = SlowFlow(slow.run_flow, 0.3)
        engine.budget.budget_s = 10.0  # never suspended: the backlog stays queued
        m = engine.meta
        rng = np.random.default_rng(4)
        xs = [torch.from_numpy(rng.random((m.channels, m.height, m.width), dtype=np.float32)) for _ in range(20)]
        sink_slow, sink_fast = WaitingSink(20), WaitingSink(6)
        lane_slow, lane_fast = engine.open_lane(sink_slow, slow), engine.open_lane(sink_fast)
        for i, x in enumerate(xs):
            engine.submit(lane_slow, x, restart=False, ticket=i)
        time.sleep(0.5)  # its second frame's flow is running
        # when it is unloaded
        t0 = time.perf_counter()
        engine.unload(slow.sha256)
        # then none of its frames is left in either stage's queue, each is answered once, the backlog with
        # ModelUnloaded, within the batch that was running; new frames on it are refused
        assert not [j for q in (engine._flow_q, engine._model_q) for j in list(q.queue) if j.lane is lane_slow]
        assert sink_slow.done.wait(2) and time.perf_counter() - t0 < 1.0
        assert sorted(t for t, _ in sink_slow.outputs) == list(range(20))
        assert sum(isinstance(o.error, ModelUnloaded) for _, o in sink_slow.outputs) >= 15
        assert slow not in engine.loaded() and slow.sha256 not in engine.usage()
        with pytest.raises(ModelUnloaded):
            engine.submit(lane_slow, xs[0], restart=False, ticket=20)
        # and the other model's streams are served at once
        t0 = time.perf_counter()
        for i, x in enumerate(xs[:6]):
            engine.submit(lane_fast, x, restart=False, ticket=i)
        assert sink_fast.done.wait(5) and time.perf_counter() - t0 < 1.0
        assert all(o.error is None for _, o in sink_fast.outputs)
    finally:
        engine.close()
