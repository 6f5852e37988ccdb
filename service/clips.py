"""Uploaded clips: checked synchronously (so bad files get a 4xx at once), then scored as jobs in a
worker thread through the same pipeline as cameras, with progress. Results hold one entry per decoded
frame, in order (``None`` for warm-up frames)."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import av

from runtime.engine import InferenceEngine
from runtime.stream import Stream, results_in_order
from runtime.video import DecodeError, iter_frames, open_source, stream_fps

from .config import ServiceSettings
from .heatmap import HeatScale
from .metrics import Metrics

MAX_HEATMAP_FRAMES = 2000


class ClipTooLarge(ValueError):
    """A clip over the size, duration or frame-count limits (HTTP 413)."""


class UnknownJob(KeyError):
    """A clip job id that does not exist (HTTP 404)."""


@dataclass
class ProbedClip:
    frames: int
    fps: float
    codec: str


@dataclass
class ClipJob:
    id: str
    path: Path
    filename: str
    frames_total: int
    fps: float
    heatmaps: bool
    status: str = "queued"  # queued / running / done / failed
    frames_done: int = 0
    error: str | None = None
    result: dict | None = None
    heatmap_jpegs: dict[int, bytes] = field(default_factory=dict)
    future: Future | None = None

    def status_dict(self) -> dict:
        out = {"id": self.id, "status": self.status, "filename": self.filename, "frames": self.frames_total,
               "progress": round(self.frames_done / max(self.frames_total, 1), 4), "error": self.error}
        if self.result is not None:
            out["result"] = self.result
        return out


def save_upload(src: BinaryIO, limit: int, limit_mb: float) -> Path:
    """Copy an upload to a temporary file, refusing more than ``limit`` bytes."""
    fd, name = tempfile.mkstemp(prefix="amvad-upload-", suffix=".bin")
    path, total = Path(name), 0
    with os.fdopen(fd, "wb") as dst:
        while chunk := src.read(2 ** 20):
            total += len(chunk)
            if total > limit:
                dst.close()
                path.unlink(missing_ok=True)
                raise ClipTooLarge(f"upload is larger than the limit of {limit_mb:g} MB")
            dst.write(chunk)
    return path


def probe_clip(path: Path, settings: ServiceSettings) -> ProbedClip:
    """Decode the whole file once (cheap next to flow and model) to reject bad uploads up front."""
    limits = settings.limits
    if path.stat().st_size == 0:
        raise DecodeError("the uploaded file is empty")
    try:
        container = open_source(str(path))
    except DecodeError as exc:  # name the problem, not our temporary file
        raise DecodeError(f"the upload is not a readable video: {exc}".replace(f"{path}: ", "")
                          .replace(f" {path}", "").replace(f"'{path}'", "upload")) from None
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
            raise DecodeError(f"the upload is truncated or undecodable ({codec}) after {n} frames: "
                              f"{exc}") from None
    if n == 0:
        raise DecodeError(f"no decodable video frames (codec {codec})")
    return ProbedClip(n, fps, codec)


class ClipJobs:
    """Queue of clip jobs, one worker thread; keeps the last ``limits.max_jobs`` jobs."""

    def __init__(self, engine: InferenceEngine, settings: ServiceSettings, metrics: Metrics) -> None:
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.jobs: OrderedDict[str, ClipJob] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="clips")

    def submit(self, path: Path, filename: str, probe: ProbedClip, heatmaps: bool) -> ClipJob:
        job = ClipJob(uuid.uuid4().hex[:16], path, filename, probe.frames, probe.fps, heatmaps)
        with self._lock:
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
        self._pool.shutdown(wait=False, cancel_futures=True)

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
        meta = self.engine.meta
        stream = Stream(self.engine, forget=self.settings.forget, events=self.settings.events,
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
        names = [c.name for c in meta.components]
        return {"frames": len(scores), "fps": job.fps, "threshold": meta.threshold, "method": meta.method,
                "warmup_frames": meta.clip_len - 1, "scores": scores, "anomaly": flags, "timestamps": times,
                "components": {n: [None if c is None else c[k] for c in comps] for k, n in enumerate(names)},
                "events": [e.to_dict() for e in events.events],
                "heatmap_frames": sorted(job.heatmap_jpegs)}


def plot_png(result: dict, title: str) -> bytes:
    """The score curve with the threshold line, as PNG bytes."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 3), dpi=100)
    ax = fig.add_subplot()
    xs = [i for i, s in enumerate(result["scores"]) if s is not None]
    ax.plot(xs, [result["scores"][i] for i in xs], lw=1.2, label="score")
    ax.axhline(result["threshold"], color="r", ls="--", lw=1, label="threshold")
    for e in result["events"]:
        ax.axvspan(e["start_frame"], e["end_frame"] if e["end_frame"] is not None else len(result["scores"]),
                   color="orange", alpha=0.25)
    ax.set_xlabel("frame")
    ax.set_ylabel("anomaly score")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
