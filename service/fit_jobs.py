"""Fit jobs: ``POST /v1/models/fit`` runs ``amvad fit`` on recordings (or media files) in a separate
process at lower priority with capped threads, so live cameras keep real time; progress comes from the
process's JSON progress file; on success the model is registered under the requested name."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from runtime.calibration import check_fit_footage
from runtime.redact import redact
from runtime.video import FRAME_EXTS, FRAME_FOLDER_FPS, file_path, open_source, stream_fps

from .config import ServiceSettings
from .event_store import EventStore
from .evidence import evidence_folder
from .model_registry import NAME, InvalidModel, ModelConflict, ModelRegistry
from .recordings import Recordings
from .security import check_media_path

log = logging.getLogger("amvad.fit")
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class FitRequest(BaseModel):
    """What to fit on and how; ``footage`` are ``file://`` URLs inside the media folders."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME.pattern, description="the name the model is registered under")
    recordings: list[str] = Field(default_factory=list, max_length=100)
    footage: list[str] = Field(default_factory=list, max_length=100)
    feedback_of: str | None = Field(None, description="also fit on this camera's event clips marked normal")
    minutes: float = Field(30.0, gt=0, le=24 * 60, description="training time budget")
    init: str = Field("none", pattern="^(none|ped2)$")
    false_alarms_per_hour: float = Field(1.0, gt=0)
    base_width: int = Field(12, ge=2, le=64)
    max_pixels: int = Field(128 * 192, ge=32 * 32, le=1024 * 1024)


class FootageError(ValueError):
    """Footage to fit on that is missing, unfinished or too short (HTTP 422; says how much is needed)."""


class FitBusy(RuntimeError):
    """Another fit is running (HTTP 429)."""


class UnknownFit(LookupError):
    """A fit job id that does not exist (HTTP 404)."""


@dataclass
class FitJob:
    id: str
    request: FitRequest
    folder: Path
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    error: str | None = None
    model: dict | None = None
    proc: subprocess.Popen | None = None

    def status(self) -> dict:
        progress = None
        path = self.folder / "progress.json"
        if path.is_file():
            try:
                progress = json.loads(path.read_text())
                progress.pop("result", None)
            except (OSError, ValueError):
                progress = None  # being replaced right now; the next poll reads it
        return {"id": self.id, "name": self.request.name, "state": self.state, "created": self.created,
                "minutes": self.request.minutes, "progress": progress, "error": self.error, "model": self.model}


def count_frames(path: Path) -> tuple[int, float]:
    """(frames, fps) of a video file or a folder of frame images (stamped as ``amvad fit`` stamps them)."""
    if path.is_dir():
        return sum(f.suffix.lower() in FRAME_EXTS for f in path.iterdir()), FRAME_FOLDER_FPS
    with open_source(str(path)) as container:
        return sum(1 for _ in container.decode(video=0)), stream_fps(container)


class FitJobs:
    """One fit at a time; the jobs of this run of the service (their work folders under ``<state>/fits``)."""

    def __init__(self, settings: ServiceSettings, registry: ModelRegistry, recordings: Recordings,
                 events: EventStore) -> None:
        self.settings, self.registry, self.recordings, self.events = settings, registry, recordings, events
        self.dir = settings.state_dir / "fits"
        self.jobs: dict[str, FitJob] = {}
        self._lock = threading.Lock()

    def footage(self, req: FitRequest) -> list[Path]:
        """The files to fit on; raises :class:`FootageError` when there is too little, naming how much."""
        if not req.recordings and not req.footage and not req.feedback_of:
            raise FootageError("name at least one recording, footage file or camera with feedback to fit on")
        paths, frames, fps = [], 0, None
        if req.feedback_of is not None:  # false alarms the operator marked normal are normal footage
            folder = evidence_folder(self.settings.state_dir, req.feedback_of)
            for event in self.events.query(camera=req.feedback_of, feedback="normal", limit=10_000):
                if event["clip"] and (folder / event["clip"]).is_file():
                    n, rate = count_frames(folder / event["clip"])
                    paths.append(folder / event["clip"])
                    frames, fps = frames + n, fps or rate
        for rec_id in req.recordings:
            segs, n, rate = self.recordings.footage(rec_id)
            paths += segs
            frames, fps = frames + n, fps or rate
        for url in req.footage:
            path = file_path(url)
            check_media_path(path, self.settings.media_dirs)
            if not path.exists():
                raise FootageError(f"footage {path.name!r} does not exist")
            n, rate = count_frames(path)
            paths.append(path)
            frames, fps = frames + n, fps or rate
        try:
            check_fit_footage(frames, fps or 10.0)
        except ValueError as exc:
            raise FootageError(str(exc)) from None
        return paths

    def submit(self, req: FitRequest) -> FitJob:
        if req.name in self.registry.names():
            raise ModelConflict(f"a model named {req.name!r} already exists")
        paths = self.footage(req)
        with self._lock:
            if any(j.state in (QUEUED, RUNNING) for j in self.jobs.values()):
                raise FitBusy("a fit is already running; one runs at a time (cancel it or wait)")
            job_id = uuid.uuid4().hex[:12]
            job = FitJob(job_id, req, self.dir / job_id)
            job.folder.mkdir(parents=True)
            self.jobs[job.id] = job
            job.proc = self._start(job, paths)
            job.state = RUNNING
        threading.Thread(target=self._watch, args=(job,), name=f"fit-{job.id}", daemon=True).start()
        return job

    def _start(self, job: FitJob, paths: list[Path]) -> subprocess.Popen:
        r, cfg = job.request, self.settings.fit
        cmd = [sys.executable, "-m", "cli", "fit", *map(str, paths), "--out", str(job.folder / "model.onnx"),
               "--minutes", str(r.minutes), "--init", r.init, "--false-alarms-per-hour", str(r.false_alarms_per_hour),
               "--base-width", str(r.base_width), "--max-pixels", str(r.max_pixels), "--threads", str(cfg.threads),
               "--progress-json", str(job.folder / "progress.json"), "--quiet"]
        threads = str(cfg.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        log.info("fit %s (%s): %d footage file(s), %g min", job.id, r.name, len(paths), r.minutes)
        with open(job.folder / "fit.log", "wb") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=lambda: os.nice(cfg.nice))

    def _watch(self, job: FitJob) -> None:
        code = job.proc.wait()
        if job.state == CANCELLED:
            return
        if code != 0:
            lines = (job.folder / "fit.log").read_text(errors="replace").strip().splitlines()
            errors = [ln for ln in lines if "error:" in ln] or lines[-1:] or [f"exit status {code}"]
            job.state, job.error = FAILED, redact(errors[-1][:500])
            return
        try:
            job.model = self.registry.add(job.request.name, job.folder / "model.onnx")
            job.state = DONE
        except (InvalidModel, ModelConflict) as exc:
            job.state, job.error = FAILED, str(exc)

    def get(self, job_id: str) -> FitJob:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownFit(f"no fit job with id {job_id!r}") from None

    def cancel(self, job_id: str) -> FitJob:
        job = self.get(job_id)
        if job.state == RUNNING and job.proc is not None:
            job.state = CANCELLED
            job.proc.terminate()
            try:
                job.proc.wait(10)
            except subprocess.TimeoutExpired:
                job.proc.kill()
        return job

    def shutdown(self) -> None:
        for job in list(self.jobs.values()):
            self.cancel(job.id)
