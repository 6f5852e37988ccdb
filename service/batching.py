"""The inference engine every stream shares: a flow stage and a model stage, each in its own thread,
each running whatever work is queued from all streams as one batch (micro-batching).

Why two stages: on a CPU the flow (PyTorch, mostly per-operation overhead) and the model (ONNX Runtime,
which releases the GIL) overlap on two cores, so frame t's model runs while frame t+1's flow is computed;
on a GPU one batched flow call and one batched model call serve many cameras. Work moves through both
stages in submission order, so each stream sees its frames in order; the per-stream windows are kept by
:class:`~service.pipeline.StreamPipeline`, whose hooks the stages call.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .engine import ExportedModel, pick_device

if TYPE_CHECKING:
    from .config import EngineConfig
    from .ingest import Frame
    from .metrics import Metrics
    from .pipeline import StreamPipeline

log = logging.getLogger("amvad.engine")
_STOP = object()


@dataclass
class Job:
    """One frame on its way through the engine."""
    pipeline: StreamPipeline
    frame: Frame
    x: torch.Tensor                 # preprocessed frame (C, H, W) on the engine's device
    restart: bool                   # the frame does not follow the previous one: start a new window
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    prev: torch.Tensor | None = None   # set by the flow stage: the frame before, when in the window
    windows: tuple[torch.Tensor, torch.Tensor] | None = None  # (T, C, H, W), (T-1, 2, H, W) when live
    stage_s: dict[str, float] = field(default_factory=dict)   # seconds each stage took for this job


def default_threads(cpus: int | None = None) -> tuple[int, int]:
    """(flow threads, model threads) on a CPU: the cores split between the two stages, which run side by
    side (2 cores: 1 + 1; oversubscribing both pools collapses throughput)."""
    cpus = cpus or os.cpu_count() or 1
    flow = max(1, cpus // 2)
    return flow, max(1, cpus - flow)


class InferenceEngine:
    """Owns the exported model and the two stage threads; ``submit`` is called by stream pipelines."""

    def __init__(self, model: str | ExportedModel = "ped2", config: EngineConfig | None = None,
                 metrics: Metrics | None = None) -> None:
        from .config import EngineConfig
        self.config = cfg = config or EngineConfig()
        self.device = pick_device(cfg.device)
        flow_threads, model_threads = default_threads()
        self.flow_threads = cfg.flow_threads or flow_threads
        self.model_threads = cfg.model_threads or model_threads
        if self.device.type == "cpu":
            torch.set_num_threads(self.flow_threads)  # process-wide; the flow is the only torch work here
        # process-wide too: measured with `amvad bench` on 2 cores, 5 ms -> 0.2 ms took 28.8 -> 31.8 frames/s
        sys.setswitchinterval(cfg.switch_interval_ms / 1000.0)
        if isinstance(model, ExportedModel):
            self.model = model
        else:
            self.model = ExportedModel(model, device=self.device, threads=self.model_threads)
        self.meta = self.model.meta
        self.max_batch = cfg.max_batch
        wait_ms = cfg.batch_wait_ms if cfg.batch_wait_ms is not None else (4.0 if self.device.type == "cuda" else 0.0)
        self.batch_wait_s = wait_ms / 1000.0
        self.metrics = metrics
        self._flow_q: queue.Queue = queue.Queue()
        self._model_q: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._loop, args=(self._flow_q, self._flow_stage),
                                          name="engine-flow", daemon=True),
                         threading.Thread(target=self._loop, args=(self._model_q, self._model_stage),
                                          name="engine-model", daemon=True)]
        self._closed = False
        for t in self._threads:
            t.start()

    def describe(self) -> dict[str, Any]:
        """The settings a benchmark or status page reports."""
        return {"device": str(self.device), "flow": self.model.flow.spec, "flow_threads": self.flow_threads,
                "model_threads": self.model_threads, "max_batch": self.max_batch,
                "batch_wait_ms": self.batch_wait_s * 1000, "providers": self.model.session.get_providers(),
                "model": {"method": self.meta.method, "height": self.meta.height, "width": self.meta.width,
                          "channels": self.meta.channels, "clip_len": self.meta.clip_len,
                          "path": str(self.model.path)}}

    def to_device(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device, non_blocking=True)

    def submit(self, job: Job) -> Future:
        if self._closed:
            raise RuntimeError("the inference engine is closed")
        self._flow_q.put(job)
        return job.future

    def close(self) -> None:
        """Stop both stages after the work already queued."""
        if not self._closed:
            self._closed = True
            self._flow_q.put(_STOP)
            for t in self._threads:
                t.join(10)

    # -- stages ------------------------------------------------------------------------------------
    def _collect(self, q: queue.Queue, first: Job) -> list[Job]:
        """``first`` plus whatever else is queued, up to ``max_batch``, waiting at most the batch budget."""
        batch = [first]
        deadline = time.perf_counter() + self.batch_wait_s
        while len(batch) < self.max_batch:
            try:
                remaining = deadline - time.perf_counter()
                item = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                q.put(_STOP)  # seen again after this batch
                break
            batch.append(item)
        return batch

    def _loop(self, q: queue.Queue, stage) -> None:
        while True:
            first = q.get()
            if first is _STOP:
                if q is self._flow_q:
                    self._model_q.put(_STOP)
                return
            batch = self._collect(q, first)
            try:
                stage(batch)
            except Exception as exc:  # the frames fail; their streams restart; the engine goes on
                log.exception("engine stage failed on a batch of %d", len(batch))
                for job in batch:
                    job.pipeline.fail(job, exc)

    @torch.no_grad()
    def _flow_stage(self, batch: list[Job]) -> None:
        t0 = time.perf_counter()
        for job in batch:  # in order: a frame's predecessor may be earlier in this same batch
            job.prev = job.pipeline.take_previous(job)
        pairs = [j for j in batch if j.prev is not None]
        flows = []
        if pairs:
            flows = self.model.flow(torch.stack([j.prev for j in pairs]), torch.stack([j.x for j in pairs]))
        spent = time.perf_counter() - t0
        it = iter(flows)
        for job in batch:
            job.stage_s["flow"] = spent
            job.pipeline.add_to_window(job, next(it) if job.prev is not None else None)
            self._model_q.put(job)
        self._observe("flow", spent, len(pairs))

    def _model_stage(self, batch: list[Job]) -> None:
        live = [j for j in batch if j.windows is not None]
        out = None
        t0 = time.perf_counter()
        if live:
            out = self.model.run_tensors(torch.stack([j.windows[0] for j in live]),
                                         torch.stack([j.windows[1] for j in live]))
        spent = time.perf_counter() - t0
        row = 0
        for job in batch:
            job.stage_s["model"] = spent
            if job.windows is not None:
                job.pipeline.finish(job, out.components[row], out.heatmap[row, 0])
                row += 1
            else:
                job.pipeline.finish(job, None, None)
        self._observe("model", spent, len(live))

    def _observe(self, stage: str, seconds: float, size: int) -> None:
        if self.metrics and size:
            self.metrics.observe_batch(stage, seconds, size)
