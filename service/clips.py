"""Uploaded clips: checked synchronously (so bad files get a 4xx at once), then scored as jobs in a
worker thread through the same pipeline as cameras, with progress, on the service's model or the one the
upload names (``?model=``: a fitted model tried on a known clip). Results hold one entry per decoded frame,
in order (``None`` for warm-up frames and for frames a camera event held), and say which model scored them;
``events`` are the anomaly events, ``camera_events`` the tampers and scene changes (never anomalies)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av

from amvad.runtime.engine import InferenceEngine
from amvad.runtime.errors import Busy, NotFound, TooLarge
from amvad.runtime.exported_model import ExportedModel
from amvad.runtime.plots import score_plot
from amvad.runtime.stream import Stream, results_in_order
from amvad.runtime.video import DecodeError, ffmpeg_reason, iter_frames, open_source, stream_fps

from .config import ServiceSettings
from .heatmap import HeatScale
from .metrics import Metrics
from .model_registry import ModelRegistry, UnknownModel

MAX_HEATMAP_FRAMES = 2000
log = logging.getLogger("amvad.clips")


class ClipTooLarge(TooLarge):
    """A clip over the size, duration or frame-count limits (HTTP 413)."""


class UnknownJob(NotFound, KeyError):
    """A clip job id that does not exist (HTTP 404)."""


class QueueFull(Busy):
    """As many clip jobs as ``limits.max_queued_jobs`` are waiting or running (HTTP 429)."""


@dataclass
class ProbedClip:
    frames: int
    fps: float
    codec: str


@dataclass(frozen=True)
class ClipModel:
    """The model a clip is scored on: the name asked for (the service's own model when none), the
    registered version it meant (None for bundled models and paths), and the loaded model."""
    name: str
    version: int | None
    model: ExportedModel

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.model.sha256}


@dataclass
class ClipJob:
    id: str
    path: Path
    filename: str
    frames_total: int
    fps: float
    heatmaps: bool
    model: ClipModel | None = None
    status: str = "queued"  # queued / running / done / failed
    frames_done: int = 0
    error: str | None = None
    result: dict | None = None
    heatmap_jpegs: dict[int, bytes] = field(default_factory=dict)
    future: Future | None = None

    def status_dict(self) -> dict:
        out = {"id": self.id, "status": self.status, "filename": self.filename, "frames": self.frames_total,
               "progress": round(self.frames_done / max(self.frames_total, 1), 4), "error": self.error,
               "model": None if self.model is None else self.model.to_dict()}
        if self.result is not None:
            out["result"] = self.result
        return out


def probe_clip(path: Path, settings: ServiceSettings, *, filename: str, min_frames: int) -> ProbedClip:
    """Decode the whole file once (cheap next to flow and model) to reject bad uploads up front; messages
    name the user's file (``filename``), never ours."""
    limits = settings.limits
    if path.stat().st_size == 0:
        raise DecodeError(f"{filename!r} is empty")
    try:
        container = open_source(str(path))
    except DecodeError as exc:
        raise DecodeError(f"{filename!r} is not a readable video ({exc.reason})") from None
    with container:
        stream = container.streams.video[0]
        fps = stream_fps(container)
        codec = stream.codec_context.name
        max_frames = min(limits.max_clip_frames, int(limits.max_clip_seconds * fps))
        n = 0
        try:
            for _ in container.decode(stream):
                n += 1
                if n > max_frames:
                    raise ClipTooLarge(f"clip is longer than the limit of {limits.max_clip_seconds:g} s "
                                       f"/ {limits.max_clip_frames} frames")
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{filename!r} is truncated or undecodable ({codec}) after {n} frames: "
                              f"{ffmpeg_reason(exc)}") from None
    if n < min_frames:
        raise DecodeError(f"{filename!r} has {n} decodable frame(s) ({codec}); the model needs a video of at "
                          f"least {min_frames} frames")
    return ProbedClip(n, fps, codec)


class ClipJobs:
    """Queue of clip jobs, one worker thread; at most ``limits.max_queued_jobs`` waiting or running, the
    last ``limits.max_jobs`` finished ones kept. Upload files live in ``<state_dir>/uploads`` and are deleted
    when their job ends or the service stops; files left by a crash are removed at start-up."""

    def __init__(self, engine: InferenceEngine, settings: ServiceSettings, metrics: Metrics,
                 registry: ModelRegistry | None = None) -> None:
        self.engine, self.settings, self.metrics, self.registry = engine, settings, metrics, registry
        self.jobs: OrderedDict[str, ClipJob] = OrderedDict()
        self.upload_dir = settings.paths.uploads
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="clips")
        stale = sorted(self.upload_dir.glob("upload-*")) if self.upload_dir.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d upload file(s) left by an earlier run", len(stale))

    def check_capacity(self) -> None:
        """Raise :class:`QueueFull` when no further job may queue (checked before and after receiving)."""
        limit = self.settings.limits.max_queued_jobs
        if sum(j.status in ("queued", "running") for j in list(self.jobs.values())) >= limit:
            raise QueueFull(f"{limit} clip jobs are already queued or running; retry later")

    def model(self, name: str | None) -> ClipModel:
        """The model ``?model=`` names (bundled, registered, ``name@N``; None: the service's own), loaded
        into the engine (once per distinct file); :class:`UnknownModel` (404) naming it otherwise."""
        if name is None:
            return ClipModel(self.settings.model, None, self.engine.model)
        if self.registry is None:
            raise UnknownModel(f"unknown model {name!r}: this service scores uploads on its own model only")
        found = self.registry.lookup(name)
        return ClipModel(name, None if found is None else found.version, self.engine.load(self.registry.path(name)))

    def probe(self, path: Path, filename: str, model: ClipModel | None = None) -> ProbedClip:
        clip_len = (self.engine.model if model is None else model.model).meta.clip_len
        return probe_clip(path, self.settings, filename=filename, min_frames=clip_len)

    def submit(self, path: Path, filename: str, probe: ProbedClip, heatmaps: bool,
               model: ClipModel | None = None) -> ClipJob:
        job = ClipJob(uuid.uuid4().hex[:16], path, filename, probe.frames, probe.fps, heatmaps,
                      model or self.model(None))
        with self._lock:
            try:
                self.check_capacity()
            except QueueFull:
                path.unlink(missing_ok=True)
                raise
            self.jobs[job.id] = job
            finished = [j for j, v in self.jobs.items() if v.status in ("done", "failed")]
            for old in finished[:max(0, len(self.jobs) - self.settings.limits.max_jobs)]:
                del self.jobs[old]  # oldest finished first; queued/running jobs are never dropped
        job.future = self._pool.submit(self._run, job)
        return job

    def get(self, job_id: str) -> ClipJob:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(f"no clip job with id {job_id!r}") from None

    def shutdown(self) -> None:
        """Cancel the queued jobs and delete the upload files of every job that has not ended."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for job in list(self.jobs.values()):
            if job.status in ("queued", "running"):
                job.path.unlink(missing_ok=True)

    def _run(self, job: ClipJob) -> None:
        job.status = "running"
        t0 = time.perf_counter()
        try:
            job.result = self._score(job)
            job.result["seconds"] = round(time.perf_counter() - t0, 3)
            job.status = "done"
        except Exception as exc:  # reported in the job; the service goes on
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.path.unlink(missing_ok=True)

    def _score(self, job: ClipJob) -> dict:
        model = job.model.model
        meta = model.meta
        stream = Stream(self.engine, model=model, forget=self.settings.forget, events=self.settings.events,
                        observer=self.metrics, keep_events=10_000)
        events, scale = stream.events, HeatScale()
        scores, flags, comps, times = [], [], [], []
        last = None
        with open_source(str(job.path)) as container:
            for frame, r in results_in_order(stream, iter_frames(container, source_id=job.id)):
                scores.append(r.score)
                flags.append(None if r.score is None else r.anomaly)
                comps.append(None if r.components is None else r.components.tolist())
                times.append(round(frame.timestamp, 4))
                if r.heatmap is not None:
                    scale.update(r.heatmap, r.anomaly)
                    if job.heatmaps and len(job.heatmap_jpegs) < MAX_HEATMAP_FRAMES:
                        job.heatmap_jpegs[frame.frame_id] = scale.overlay(frame.pixels, r.heatmap)
                job.frames_done, last = len(scores), frame
        if last is not None:
            events.finish(last.timestamp, last.frame_id)
            stream.watch.finish(last.timestamp, last.frame_id)
        names = [c.name for c in meta.components]
        return {"frames": len(scores), "fps": job.fps, "threshold": meta.threshold, "method": meta.method,
                "model": job.model.to_dict(),
                "warmup_frames": meta.clip_len - 1, "scores": scores, "anomaly": flags, "timestamps": times,
                "components": {n: [None if c is None else c[k] for c in comps] for k, n in enumerate(names)},
                "events": [e.to_dict() for e in events.events],
                "camera_events": [e.to_dict() for e in stream.watch.events],
                "heatmap_frames": sorted(job.heatmap_jpegs)}


def plot_png(result: dict, title: str) -> bytes:
    """The score curve with the threshold line and the clip's events, as PNG bytes."""
    return score_plot(range(len(result["scores"])), result["scores"], result["threshold"], title=title,
                      events=[(e["start_frame"], e["end_frame"]) for e in result["events"]])