"""Fit jobs: ``POST /v1/models/fit`` runs a fit worker (``amvad fit --job DIR``) on recordings (or media
files) in a separate process at lower priority with capped threads, so live cameras keep real time.

The job folder (``<state>/fits/<job>``) follows the fit-job contract of ``runtime/fit_job.py``: the service
writes the request, the worker keeps the progress record, and the state, result and error are read from
that record (never from the log). On success the model is moved into the registry (the next version of
its name, with its model card, which says so). The worker dies with
the service (``PR_SET_PDEATHSIG``), and :meth:`FitJobs.recover` (run by the constructor) removes the
folders of an earlier run, killing a worker still running for one. At most ``limits.max_fit_jobs``
finished jobs are kept, records and folders (the log, request, progress and model card stay there for
the operator until then); older ones are forgotten and their folders removed."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from amvad.models.registry import bundled_models
from amvad.runtime.calibration import check_fit_footage
from amvad.runtime.errors import Busy, Invalid, NotFound, StorageFull, Unavailable
from amvad.runtime.fit_job import (
    DEFAULT_BASE_WIDTH,
    DEFAULT_MAX_PIXELS,
    FitError,
    FitProgress,
    FitSpec,
    JobFolder,
    child_preexec,
    read_progress,
    remove_leftover_jobs,
    worker_command,
    write_pid,
    write_request,
)
from amvad.runtime.video import FRAME_EXTS, FRAME_FOLDER_FPS, file_path, open_source, stream_fps

from .config import ServiceSettings
from .event_store import EventStore
from .model_registry import NAME, InvalidModel, ModelConflict, ModelRegistry
from .recordings import Recordings
from .security import check_media_path

log = logging.getLogger("amvad.fit")
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
MODEL_FILE = "model.onnx"


class FitRequest(BaseModel):
    """What to fit on and how: recordings, footage files and/or a camera's events marked normal (at least
    one); ``footage`` are ``file://`` URLs inside the media folders."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME.pattern, description="the name the model is registered under; a registered "
                      "name gets a new version (current once the fit succeeds, cameras on the name follow it)")
    recordings: list[str] = Field(default_factory=list, max_length=100, description="ids of recordings of a live "
                                  "camera (POST /v1/cameras/{id}/recordings)")
    footage: list[str] = Field(default_factory=list, max_length=100, description="normal footage already on the "
                               "service's machine: file:// URLs of video files, folders of videos or folders of frame "
                               "images, inside media_dirs, e.g. [\"file:///srv/footage/gate-monday.mp4\"]",
                               examples=[["file:///srv/footage/gate-monday.mp4", "file:///srv/footage/gate-frames"]])
    feedback_of: str | None = Field(None, description="also fit on this camera's event clips marked normal")
    minutes: float = Field(30.0, gt=0, le=24 * 60, description="training time budget")
    init: str = Field("none", pattern="^(none|ped2)$")
    false_alarms_per_hour: float = Field(1.0, gt=0)
    base_width: int = Field(DEFAULT_BASE_WIDTH, ge=2, le=64)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=32 * 32, le=1024 * 1024)
    augment: bool = Field(False, description="also train on a noisy and a compressed copy of the footage")


class FootageError(Invalid):
    """Footage to fit on that is missing, unfinished or too short (HTTP 422; says how much is needed)."""


class FitBusy(Busy):
    """Another fit is running (HTTP 429)."""


class UnknownFit(NotFound):
    """A fit job id that does not exist (HTTP 404)."""


@dataclass
class FitJob:
    """One job of this run of the service; ``progress`` is the worker's final record once it ended."""
    id: str
    request: FitRequest
    folder: Path
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    finished: float | None = None
    error: FitError | None = None
    model: dict | None = None
    progress: FitProgress | None = None
    proc: subprocess.Popen | None = None

    def status(self) -> dict:
        """The API's view: ``progress`` without the result (``model`` describes the registered model),
        ``error`` the message and ``error_detail`` the structured :class:`~runtime.fit_job.FitError`."""
        progress = self.progress if self.state in FINISHED else read_progress(JobFolder(self.folder).progress)
        return {"id": self.id, "name": self.request.name, "state": self.state, "created": self.created,
                "minutes": self.request.minutes,
                "progress": progress.model_dump(exclude={"result"}, exclude_none=True) if progress else None,
                "error": self.error.message if self.error else None,
                "error_detail": self.error.model_dump() if self.error else None, "model": self.model}


def count_frames(path: Path) -> tuple[int, float]:
    """(frames, fps) of a video file or a folder of frame images (stamped as ``amvad fit`` stamps them)."""
    if path.is_dir():
        return sum(f.suffix.lower() in FRAME_EXTS for f in path.iterdir()), FRAME_FOLDER_FPS
    with open_source(str(path)) as container:
        return sum(1 for _ in container.decode(video=0)), stream_fps(container)


class FitJobs:
    """One fit at a time; the jobs of this run of the service (their work folders under ``<state>/fits``).
    The constructor clears what an earlier run left there (:meth:`recover`). ``jobs`` is replaced, never
    changed in place, so a reader may iterate it while jobs come and go."""

    def __init__(self, settings: ServiceSettings, registry: ModelRegistry, recordings: Recordings,
                 events: EventStore) -> None:
        self.settings, self.registry, self.recordings, self.events = settings, registry, recordings, events
        self.dir = settings.paths.fits
        self.jobs: dict[str, FitJob] = {}
        self._lock = threading.Lock()
        self.recover()

    def recover(self) -> list[str]:
        """Remove every job folder an earlier run of the service left (its jobs are gone with it), killing
        a worker still running for one; the names of the removed folders."""
        try:
            removed = remove_leftover_jobs(self.dir)
        except OSError as exc:
            log.warning("cannot clear the fits folder %s: %s", self.dir, exc)
            return []
        for name, pid in removed:
            log.info("removed fit folder %s of an earlier run%s", name,
                     f" (killed its worker, pid {pid})" if pid else "")
        return [name for name, _ in removed]

    def footage(self, req: FitRequest) -> list[Path]:
        """The files to fit on; raises :class:`FootageError` when there is too little, naming how much."""
        if not req.recordings and not req.footage and not req.feedback_of:
            raise FootageError("name at least one recording, footage file or camera with feedback to fit on")
        paths, frames, fps = [], 0, None
        if req.feedback_of is not None:  # false alarms the operator marked normal are normal footage
            folder = self.settings.paths.evidence(req.feedback_of)
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
        """Write the job's request and start its worker; returns once the worker runs (or failed to start)."""
        if req.name in bundled_models():
            raise ModelConflict(f"{req.name!r} is a bundled model; it cannot be replaced (fit under another name)")
        paths = self.footage(req)
        with self._lock:
            if any(j.state in (QUEUED, RUNNING) for j in self.jobs.values()):
                raise FitBusy("a fit is already running; one runs at a time (cancel it or wait)")
            job_id = uuid.uuid4().hex[:12]
            job = FitJob(job_id, req, self.dir / job_id)
            spec = FitSpec(footage=paths, out=job.folder / MODEL_FILE, minutes=req.minutes, init=req.init,
                           false_alarms_per_hour=req.false_alarms_per_hour, base_width=req.base_width,
                           max_pixels=req.max_pixels, augment=req.augment, threads=self.settings.fit.threads,
                           registered_as=req.name)
            try:
                job.folder.mkdir(parents=True)
                write_request(job.folder, spec)
            except OSError as exc:
                shutil.rmtree(job.folder, ignore_errors=True)
                error = StorageFull if exc.errno == errno.ENOSPC else Unavailable
                raise error(f"cannot write the fit job's folder: {exc.strerror or exc}") from None
            self.jobs = {**self.jobs, job.id: job}
        started = threading.Event()
        # The worker is started from this thread, which waits for it: the parent-death signal follows the
        # starting thread, and a request's worker thread may end long before the fit does.
        threading.Thread(target=self._run, args=(job, started), name=f"fit-{job.id}", daemon=True).start()
        started.wait()
        return job

    def _run(self, job: FitJob, started: threading.Event) -> None:
        try:
            job.proc = self._start(job)
            job.state = RUNNING
        except OSError as exc:
            job.error = FitError(kind="internal", type=type(exc).__name__,
                                 message=f"cannot start the fit process: {exc.strerror or exc}")
            self._finish(job, FAILED)
            return
        finally:
            started.set()
        code = job.proc.wait()
        self._ended(job, code)

    def _start(self, job: FitJob) -> subprocess.Popen:
        r, cfg = job.request, self.settings.fit
        threads = str(cfg.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        log.info("fit %s (%s): %g min", job.id, r.name, r.minutes)
        with open(JobFolder(job.folder).log, "wb") as out:
            proc = subprocess.Popen(worker_command(job.folder), stdout=out, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=child_preexec(cfg.nice))
        try:
            write_pid(job.folder, proc.pid)
        except OSError as exc:  # the worker still dies with the service; only a restart's clean-up misses it
            log.warning("fit %s: cannot record the worker's pid: %s", job.id, exc)
        return proc

    def _ended(self, job: FitJob, code: int) -> None:
        """The worker exited: register its model, or take its error from the progress record."""
        job.progress = progress = read_progress(JobFolder(job.folder).progress)
        if job.state == CANCELLED:
            self._finish(job, CANCELLED)
            return
        if code == 0 and progress is not None and progress.stage == "done":
            card = job.folder / Path(MODEL_FILE).with_suffix(".md")
            try:
                job.model = self.registry.add(job.request.name, job.folder / MODEL_FILE,
                                              card=card.read_text() if card.is_file() else None)
            except (InvalidModel, ModelConflict) as exc:
                kind = "input" if isinstance(exc, ModelConflict) else "internal"
                job.error = FitError(kind=kind, type=type(exc).__name__, message=str(exc))
                self._finish(job, FAILED)
                return
            self._finish(job, DONE)
            return
        if progress is not None and progress.error is not None:
            job.error = progress.error
        elif code != 0:
            job.error = FitError.from_exit(code)
        else:
            job.error = FitError(kind="exited", type="exit", message="the fit process ended without a result")
        self._finish(job, FAILED)

    def _finish(self, job: FitJob, state: str) -> None:
        """Older jobs are forgotten and their folders gone before this one reads as finished, so a client that
        sees it finished also sees the bound kept."""
        with self._lock:
            job.finished = time.time()
            self._forget_old(ending=job)
            job.state = state
        log.info("fit %s (%s): %s%s", job.id, job.request.name, state, f": {job.error.message}" if job.error else "")

    def _forget_old(self, ending: FitJob) -> None:
        """Keep the newest ``limits.max_fit_jobs`` finished jobs (``ending`` counted among them); forget older
        ones and remove their folders."""
        finished = sorted((j for j in self.jobs.values() if j.state in FINISHED or j is ending),
                          key=lambda j: j.finished or 0.0)
        old = finished[:max(0, len(finished) - self.settings.limits.max_fit_jobs)]
        if old:
            gone = {j.id for j in old}
            self.jobs = {k: j for k, j in self.jobs.items() if k not in gone}  # a new dict: readers iterate the old
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)

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
