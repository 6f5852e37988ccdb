"""The engine knows a stream only through ``StreamSink``: one call per submitted frame, in order, and the
window it keeps per stream restarts when asked or after a failure."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from runtime.engine import EngineConfig, InferenceEngine
from runtime.types import EngineOutput


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
        flows = torch.stack([engine.model.flow(xs[i][None], xs[i + 1][None])[0]
                             for i in range(len(xs) - m.clip_len, len(xs) - 1)])[None]
        np.testing.assert_allclose(last_a.components, engine.model.run_tensors(frames, flows).components[0],
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(last_b.components, other.run_tensors(frames, flows).components[0],
                                   rtol=1e-4, atol=1e-4)
        assert len(last_a.components) != len(last_b.components) or not np.allclose(last_a.components,
                                                                                     last_b.components)
    finally:
        engine.close()
