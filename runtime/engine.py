"""The inference engine every stream shares: a flow stage and a model stage, each in its own thread,
each running whatever work is queued from all streams as one batch (micro-batching).

Why two stages: on a CPU the flow and the model (each run by the model's backend, runtime/backends, which
releases the GIL) overlap on two cores, so frame t's model runs while frame t+1's flow is computed;
on a GPU one batched flow call and one batched model call serve many cameras. Work moves through both
stages in submission order. Each stream has a :class:`Lane` here: its temporal window of frames and flows,
owned and changed by the flow thread alone. The engine knows a stream only as a
:class:`~runtime.types.StreamSink` and hands it each frame's :class:`~runtime.types.EngineOutput` once.

A per-model time budget (``EngineConfig.model_budget_ms``, flow + model per frame, on
:func:`~runtime.exported_model.cost_clock`; ``runtime/budget.py``) keeps one model from starving the
others. :meth:`InferenceEngine.load` measures one frame and refuses a model over the budget
(:class:`~runtime.budget.ModelTooSlow`). At run time each stage times every model's batch; a model
whose cost per frame goes over the budget is *suspended* for ``budget_suspend_s`` (doubled for each
suspension in a row, at most 8x): while suspended its frames cost nothing, each is answered with
a :class:`~runtime.budget.ModelOverBudget` error (counted in :meth:`InferenceEngine.usage`; the stream
fails that frame and restarts its window, as after any engine error), and it is measured afresh when it
comes back. So a slow model costs the others at most one batch per suspension.
:meth:`InferenceEngine.unload` drops every queued frame of the model.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from amvad.models.flow import trailing_mean
from amvad.models.registry import resolve_model

from .backends import BackendName, PrecisionName
from .budget import ModelBudget
from .device import pick_device
from .errors import Unavailable
from .exported_model import ExportedModel, cost_clock, file_sha256
from .motion_speed import speed_maps, window_speed
from .types import EngineOutput, Observer, StreamSink

log = logging.getLogger("amvad.engine")
_STOP = object()


class ModelUnloaded(Unavailable):
    """A frame of a model the engine no longer serves (:meth:`InferenceEngine.unload`)."""


class EngineConfig(BaseModel):
    """The shared inference engine: device, CPU thread split and micro-batching."""
    model_config = ConfigDict(extra="forbid")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when available")
    backend: BackendName = Field("auto", description="what runs the models (runtime/backends): onnxruntime "
                                 "(CPU, CUDA) or openvino (CPU; it also runs the TV-L1 flow as a graph); auto = "
                                 "ONNX Runtime on CUDA, OpenVINO on a CPU when installed, else ONNX Runtime")
    precision: PrecisionName = Field("auto", description="fp32, bf16 or fp16; a reduced precision runs only "
                                     "when native to the backend and the model has a passing parity record "
                                     "(runtime/parity.py), else fp32 and the model says why; auto = the "
                                     "fastest such precision")
    precision_gate: bool = Field(True, description="hold a reduced precision to the model's parity record; "
                                 "off only to measure a precision (amvad eval --precision)")
    cache_dir: Path | None = Field(None, description="compiled models and flow graphs (default "
                                   "$AMVAD_CACHE_DIR, else ~/.cache/amvad; the service uses <state_dir>/cache)")
    flow_threads: int | None = Field(None, ge=1, description="threads for the flow; default half the cores")
    model_threads: int | None = Field(None, ge=1, description="threads for the model; default the other half")
    max_batch: int = Field(32, ge=1, description="most frames (from all streams) in one flow or model batch")
    batch_wait_ms: float | None = Field(None, ge=0, le=100, description="how long a stage waits for more "
                                        "frames to fill a batch; default 0 on CPU, 4 ms on CUDA")
    max_inflight: int = Field(4, ge=1, description="frames of one stream in the engine at once")
    switch_interval_ms: float = Field(0.2, gt=0, le=5, description="Python's GIL switch interval for the "
                                      "process (default 5 ms): the flow holds the GIL between its many small "
                                      "operations, and a shorter interval lets the other stages in sooner")
    model_budget_ms: float = Field(250.0, gt=0, le=60_000, description="per-model time budget: the most flow "
                                   "+ model time one frame of a model may cost (on a CPU the stage thread's "
                                   "CPU time, so other load on the cores does not count; on CUDA wall time). "
                                   "A model measured over it at load is refused (HTTP 422); one whose batches "
                                   "cost more per frame at run time is suspended for budget_suspend_s (its "
                                   "frames dropped, counted, each answered with an error), so it cannot "
                                   "starve the other models. The bundled models take 60-90 ms on 2 CPU cores")
    budget_suspend_s: float = Field(10.0, gt=0, le=600, description="how long a model over its budget at run "
                                    "time is suspended; doubled for each suspension in a row (at most 8x)")


def default_threads(cpus: int | None = None) -> tuple[int, int]:
    """(flow threads, model threads) on a CPU: the cores split between the two stages, which run side by
    side (2 cores: 1 + 1; oversubscribing both pools collapses throughput)."""
    cpus = cpus or os.cpu_count() or 1
    flow = max(1, cpus // 2)
    return flow, max(1, cpus - flow)


class Lane:
    """One stream's seat in the engine: its model, and the last ``clip_len`` frames and the flows between
    them (with the model's ``speed``: the speed maps of its last ``window`` frames, runtime/motion_speed.py).
    Only the engine's flow thread reads or changes the window; ``broken`` (set by either stage when a frame of
    this stream fails) makes the next frame start a new window."""

    def __init__(self, sink: StreamSink, model: ExportedModel, mask: torch.Tensor | None = None) -> None:
        self.sink, self.model = sink, model
        self.mask = mask  # (1, H, W) on the engine's device, 1 = counts; None = every pixel counts
        clip_len = model.meta.clip_len
        self.frames: deque[torch.Tensor] = deque(maxlen=clip_len)
        self.valids: deque[torch.Tensor | None] = deque(maxlen=clip_len)  # each frame's own picture (Job.valid)
        self.flows: deque[torch.Tensor] = deque(maxlen=clip_len - 1)
        self.pair_flows: deque[torch.Tensor] = deque(maxlen=model.flow.span)  # as measured, for the span's mean
        speed = model.meta.speed
        # the latest frames submitted (the flow stage's first pass): the one before a frame and ``gap`` before
        self.recent: deque[torch.Tensor] = deque(maxlen=speed.gap if speed else 1)
        self.speed_maps: deque[torch.Tensor] = deque(maxlen=speed.window if speed else 1)  # runtime.motion_speed
        self.broken = False


@dataclass
class _Job:
    """One frame on its way through the engine."""
    lane: Lane
    x: torch.Tensor                 # preprocessed frame (C, H, W) on the engine's device
    restart: bool                   # the frame starts a new window
    ticket: Any                     # the stream's own handle for this frame, given back with the output
    valid: torch.Tensor | None = None  # (1, H, W): 0 where stabilisation filled the frame from its edge
    submitted: float = field(default_factory=time.perf_counter)
    prev: torch.Tensor | None = None                          # the frame before, when in the window
    far: torch.Tensor | None = None                           # the frame speed.gap before, when in the window
    speed_map: torch.Tensor | None = None                     # (P, Q): runtime.motion_speed's map, far -> x
    speed: float | None = None                                # the window's motion_speed component
    window: tuple[torch.Tensor, torch.Tensor] | None = None   # (T, C, H, W), (T-1, 2, H, W) when full
    window_valid: torch.Tensor | None = None  # (1, H, W): where every frame of the window has its own picture
    stage_s: dict[str, float] = field(default_factory=dict)   # seconds each stage took for this job
    error: BaseException | None = None                        # why the frame is dropped without work


def by_model(jobs: list[_Job]) -> dict[ExportedModel, list[_Job]]:
    """Jobs grouped by their lane's model, each group in submission order (one batch per model)."""
    groups: dict[ExportedModel, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.lane.model, []).append(job)
    return groups


def speed_weight(job: _Job) -> torch.Tensor | None:
    """(1, H, W): the pixels that count for ``job``'s speed: its stream's mask where the frame has its own
    picture (None: all)."""
    mask, valid = job.lane.mask, job.valid
    return mask if valid is None else valid if mask is None else mask * valid


def job_mask(job: _Job, model: ExportedModel) -> torch.Tensor:
    """(1, H, W): the pixels that count for ``job``'s window: its stream's mask where the window's frames
    all have their own picture."""
    mask = job.lane.mask if job.lane.mask is not None else torch.ones(
        1, model.meta.height, model.meta.width, device=job.window[0].device)
    return mask if job.window_valid is None else mask * job.window_valid


class InferenceEngine:
    """Owns the exported models and the two stage threads; streams open a lane on a model and submit
    frames to it. ``model`` is the default model; :meth:`load` adds more (each batched on its own, each
    held to the per-model budget described in the module docstring)."""

    def __init__(self, model: str | Path | ExportedModel = "ped2", config: EngineConfig | None = None,
                 observer: Observer | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        self.device = pick_device(cfg.device)
        flow_threads, model_threads = default_threads()
        self.flow_threads = cfg.flow_threads or flow_threads
        self.model_threads = cfg.model_threads or model_threads
        if self.device.type == "cpu":
            torch.set_num_threads(self.flow_threads)  # process-wide; the flow is the only torch work here
        # process-wide too: measured with `amvad bench` on 2 cores, 5 ms -> 0.2 ms took 28.8 -> 31.8 frames/s
        sys.setswitchinterval(cfg.switch_interval_ms / 1000.0)
        self.budget = ModelBudget(cfg.model_budget_ms, cfg.budget_suspend_s)
        self._clock = cost_clock(self.device)  # what a model's work is measured on against its budget
        self._models: dict[str, ExportedModel] = {}  # content hash -> loaded model
        self._retired: weakref.WeakSet[ExportedModel] = weakref.WeakSet()  # unloaded; lanes may still hold them
        self._models_lock = threading.Lock()
        self.model = model if isinstance(model, ExportedModel) else self.load(model)
        self._models.setdefault(self.model.sha256, self.model)
        self.meta = self.model.meta
        self.max_batch = cfg.max_batch
        wait_ms = cfg.batch_wait_ms if cfg.batch_wait_ms is not None else (4.0 if self.device.type == "cuda" else 0.0)
        self.batch_wait_s = wait_ms / 1000.0
        self.observer = observer
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
        return {"device": str(self.device), **self.model.describe(), "flow_threads": self.flow_threads,
                "model_threads": self.model_threads, "max_batch": self.max_batch,
                "batch_wait_ms": self.batch_wait_s * 1000, "model_budget_ms": self.budget.budget_ms,
                "model": {"method": self.meta.method, "height": self.meta.height, "width": self.meta.width,
                          "channels": self.meta.channels, "clip_len": self.meta.clip_len,
                          "path": str(self.model.path)}}

    def load(self, name_or_path: str | Path) -> ExportedModel:
        """The loaded model of a bundled name or file, loading it once per distinct content (thread-safe;
        runs in the caller's thread, so the stages go on serving other streams meanwhile). A model whose
        frame costs more than the budget is refused with :class:`~runtime.budget.ModelTooSlow`; bad metadata raises
        :class:`~runtime.exported_model.InvalidModelFile`."""
        sha = file_sha256(resolve_model(name_or_path))
        with self._models_lock:
            if sha in self._models:
                return self._models[sha]
        model = self.open(name_or_path)
        cost = self.budget.admit(model)
        log.info("model %s loaded on %s %s: %s per frame (budget %g ms)", model.path.name, model.backend.name,
                 model.precision.used, cost.describe(), self.budget.budget_ms)
        with self._models_lock:
            return self._models.setdefault(model.sha256, model)

    def open(self, name_or_path: str | Path) -> ExportedModel:
        """A model loaded the way this engine runs models (device, threads, backend, precision, cache), not
        yet served (:meth:`load` serves it)."""
        cfg = self.config
        return ExportedModel(name_or_path, device=self.device, threads=self.model_threads, backend=cfg.backend,
                             precision=cfg.precision, cache_dir=cfg.cache_dir, flow_threads=self.flow_threads,
                             gate=cfg.precision_gate)

    def unload(self, sha256: str) -> None:
        """Forget a loaded model (not the default one) and drop all of its frames still queued: they, and any
        frame a lane on it submits later, are answered with :class:`ModelUnloaded`."""
        if sha256 == self.model.sha256:
            return
        with self._models_lock:
            model = self._models.pop(sha256, None)
            if model is None:
                return
            self._retired.add(model)
        self.budget.forget(model)
        gone = self._purge(self._flow_q, model) + self._purge(self._model_q, model)
        error = ModelUnloaded(f"model {model.path.name} was unloaded")
        for job in gone:
            job.lane.broken = True
            self._deliver(job, self._failed(job, error))
        if gone:
            log.info("model %s unloaded: %d queued frame(s) dropped", model.path.name, len(gone))

    def loaded(self) -> list[ExportedModel]:
        with self._models_lock:
            return list(self._models.values())

    def usage(self) -> dict[str, dict[str, Any]]:
        """Per loaded model (by content hash): its latest cost per frame, whether it is suspended for going
        over the budget (seconds left) and how many frames were dropped for it."""
        return self.budget.usage(self.loaded())

    def open_lane(self, sink: StreamSink, model: ExportedModel | None = None) -> Lane:
        return Lane(sink, model or self.model)

    def to_device(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device, non_blocking=True)

    def submit(self, lane: Lane, x: torch.Tensor, *, restart: bool, ticket: Any,
               valid: torch.Tensor | None = None) -> None:
        """Queue one preprocessed frame (C, H, W) of ``lane``'s stream; its output reaches the lane's sink.
        ``valid`` (1, H, W): 0 where the frame has no picture of its own (left out of its window's errors)."""
        if self._closed:
            raise RuntimeError("the inference engine is closed")
        if lane.model in self._retired:
            raise ModelUnloaded(f"model {lane.model.path.name} was unloaded")
        self._flow_q.put(_Job(lane, x, restart, ticket, valid))

    def close(self) -> None:
        """Stop both stages after the work already queued."""
        if not self._closed:
            self._closed = True
            self._flow_q.put(_STOP)
            for t in self._threads:
                t.join(10)

    def _refusal(self, model: ExportedModel, now: float) -> BaseException | None:
        """Why a frame of ``model`` is dropped without work right now (None: it runs)."""
        if model in self._retired:
            return ModelUnloaded(f"model {model.path.name} was unloaded")
        return self.budget.refusal(model, now)

    @staticmethod
    def _purge(q: queue.Queue, model: ExportedModel) -> list[_Job]:
        """Take every job of ``model`` out of ``q`` (under the queue's own lock), keeping the others' order."""
        with q.mutex:
            gone = [j for j in q.queue if j is not _STOP and j.lane.model is model]
            if gone:
                keep = [j for j in q.queue if j is _STOP or j.lane.model is not model]
                q.queue.clear()
                q.queue.extend(keep)
        return gone

    # -- stages ------------------------------------------------------------------------------------
    def _collect(self, q: queue.Queue, first: _Job) -> list[_Job]:
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
                    job.lane.broken = True
                    self._deliver(job, self._failed(job, exc))

    @torch.no_grad()
    def _flow_stage(self, batch: list[_Job]) -> None:
        now = time.monotonic()
        for job in batch:
            job.error = job.error or self._refusal(job.lane.model, now)
        run = [j for j in batch if j.error is None]
        for job in run:  # in order: a frame's predecessors may be earlier in this same batch
            lane = job.lane
            if lane.broken:
                job.restart, lane.broken = True, False
            if job.restart:
                lane.recent.clear()
            job.prev = lane.recent[-1] if lane.recent else None
            gap = lane.model.meta.speed.gap if lane.model.meta.speed else 0
            job.far = lane.recent[-gap] if gap and len(lane.recent) >= gap else None
            lane.recent.append(job.x)
        pairs = [j for j in run if j.prev is not None]
        flow_of: dict[int, torch.Tensor] = {}
        t0 = time.perf_counter()
        for model, group in by_model(pairs).items():
            g0 = self._clock()
            far = [j for j in group if j.far is not None]  # the speed's pairs ride in the same flow batch
            flows = model.run_flow(torch.stack([j.prev for j in group] + [j.far for j in far]),
                                   torch.stack([j.x for j in group + far]))
            if flows.is_cuda:  # charge this model for its own kernels, not the next model's batch
                torch.cuda.current_stream(flows.device).synchronize()
            flow_of.update({id(j): f for j, f in zip(group, flows)})
            if far:
                weights = [speed_weight(j) for j in far]
                weight = None if all(w is None for w in weights) else torch.stack(
                    [torch.ones_like(j.x[:1]) if w is None else w for j, w in zip(far, weights)])
                for j, m in zip(far, speed_maps(flows[len(group):], model.meta.speed, weight)):
                    j.speed_map = m
            self.budget.account(model, "flow", self._clock() - g0, len(group))
        spent = time.perf_counter() - t0
        for job in batch:
            lane = job.lane
            if job.error is not None:  # dropped: the model stage answers it, in order; the window restarts
                lane.broken = True
                self._model_q.put(job)
                continue
            if job.restart:
                lane.frames.clear()
                lane.flows.clear()
                lane.pair_flows.clear()
                lane.valids.clear()
                lane.speed_maps.clear()
            if job.speed_map is not None:
                lane.speed_maps.append(job.speed_map)
            if job.prev is not None:
                lane.pair_flows.append(flow_of[id(job)])
                lane.flows.append(trailing_mean(torch.stack(tuple(lane.pair_flows)), lane.model.flow.span)[-1])
            lane.frames.append(job.x)
            lane.valids.append(job.valid)
            if len(lane.frames) == lane.frames.maxlen:
                job.window = (torch.stack(tuple(lane.frames)), torch.stack(tuple(lane.flows)))
                partial = [v for v in lane.valids if v is not None]
                job.window_valid = torch.stack(partial).amin(0) if partial else None
                if lane.model.meta.speed is not None:
                    job.speed = float(window_speed(torch.stack(tuple(lane.speed_maps)), lane.model.meta.speed)[-1])
            job.stage_s["flow"] = spent
            self._model_q.put(job)
        self._observe("flow", spent, len(pairs))

    def _model_stage(self, batch: list[_Job]) -> None:
        now = time.monotonic()
        for job in batch:  # a model suspended (or unloaded) since the flow stage: its frames go no further
            job.error = job.error or self._refusal(job.lane.model, now)
        live = [j for j in batch if j.error is None and j.window is not None]
        rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        t0 = time.perf_counter()
        for model, group in by_model(live).items():
            g0 = self._clock()
            masks = None
            if any(j.lane.mask is not None or j.window_valid is not None for j in group):
                masks = torch.stack([job_mask(j, model) for j in group])
            out = model.run_tensors(torch.stack([j.window[0] for j in group]),
                                    torch.stack([j.window[1] for j in group]), masks)
            self.budget.account(model, "model", self._clock() - g0, len(group))
            comps = out.components
            if model.meta.speed is not None:  # the runtime's own component, last (runtime/motion_speed.py)
                comps = np.concatenate([comps, np.array([[j.speed] for j in group], comps.dtype)], 1)
            rows.update({id(j): (comps[r], out.heatmap[r, 0]) for r, j in enumerate(group)})
        spent = time.perf_counter() - t0
        self._observe("model", spent, len(live))
        for job in batch:
            if job.error is not None:
                job.lane.broken = True
                self._deliver(job, self._failed(job, job.error))
                continue
            job.stage_s["model"] = spent
            comps, heat = rows.get(id(job), (None, None))
            self._deliver(job, EngineOutput(comps, heat, job.restart, None, job.stage_s,
                                            time.perf_counter() - job.submitted))

    @staticmethod
    def _failed(job: _Job, error: BaseException) -> EngineOutput:
        return EngineOutput(None, None, job.restart, error, job.stage_s, time.perf_counter() - job.submitted)

    def _deliver(self, job: _Job, out: EngineOutput) -> None:
        """The one call from the engine to a stream per frame; a stream's own failure stays with it."""
        try:
            job.lane.sink.engine_done(job.ticket, out)
        except Exception:
            log.exception("a stream failed to take the result of one of its frames")

    def _observe(self, stage: str, seconds: float, size: int) -> None:
        if self.observer and size:
            self.observer.observe_batch(stage, seconds, size)
