"""Calibration jobs: ``POST /v1/cameras/{id}/calibrate`` listens to ``seconds`` of a live camera's scores in
a thread of its own and answers at once with a job to poll, because a request held open for minutes tells
the operator nothing meanwhile and is cut by proxies and clients. One job runs per camera; the newest
``limits.max_calibrations`` finished ones are kept. The threshold is set by the manager
(:meth:`CameraManager.calibrate`) once the footage is in; a cancelled job sets nothing."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from amvad.runtime.errors import AmvadError, Conflict, NotFound

from .camera import Camera, CameraNotLive

log = logging.getLogger("amvad.cameras")
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
POLL_S = 0.2  # how often a job updates its progress and looks for a cancel or its camera's end


class Cameras(Protocol):
    """What a calibration needs of the camera manager (which owns the calibrations: no import back)."""

    def get(self, camera_id: str) -> Camera: ...

    def calibrate(self, camera_id: str, scores: list[float], seconds: float, false_alarms_per_hour: float,
                  allow_below_training: bool = False) -> dict: ...


class CalibrationBusy(Conflict):
    """A calibration of this camera is already running (HTTP 409)."""


class UnknownCalibration(NotFound):
    """A calibration job id this camera does not have (HTTP 404)."""


@dataclass
class CalibrationJob:
    """One calibration: what was asked, progress while it listens, then the result or the error."""
    id: str
    camera: str
    seconds: float
    false_alarms_per_hour: float
    allow_below_training: bool
    state: str = RUNNING
    created: float = field(default_factory=time.time)
    finished: float | None = None
    elapsed_s: float = 0.0
    frames: int = 0
    fps: float = 0.0
    result: dict | None = None
    error: AmvadError | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)

    def status(self) -> dict:
        """``progress``: ``fraction`` of the asked seconds listened, ``frames`` scored so far and the
        ``footage_seconds`` they make at the camera's rate; ``error_status`` is the HTTP status of ``error``."""
        footage = round(self.frames / self.fps, 1) if self.fps > 0 else None
        return {"id": self.id, "camera": self.camera, "state": self.state, "created": self.created,
                "finished": self.finished, "seconds": self.seconds,
                "false_alarms_per_hour": self.false_alarms_per_hour,
                "allow_below_training": self.allow_below_training,
                "progress": {"fraction": round(min(1.0, self.elapsed_s / self.seconds), 3),
                             "elapsed_seconds": round(self.elapsed_s, 1), "frames": self.frames,
                             "footage_seconds": footage},
                "result": self.result, "error": None if self.error is None else self.error.message,
                "error_status": None if self.error is None else self.error.status}


class Calibrations:
    """The calibration jobs of all cameras. ``jobs`` is replaced, never changed in place, so a reader may
    iterate it while jobs come and go."""

    def __init__(self, cameras: Cameras, keep: int) -> None:
        self.cameras, self.keep = cameras, keep
        self.jobs: dict[str, CalibrationJob] = {}
        self._lock = threading.Lock()

    def start(self, camera_id: str, seconds: float, false_alarms_per_hour: float,
              allow_below_training: bool = False) -> CalibrationJob:
        """Start listening now; 409 when the camera is not live or already calibrating."""
        cam = self.cameras.get(camera_id)
        cam.require_live("calibrate")
        with self._lock:
            running = [j for j in self.jobs.values() if j.camera == camera_id and j.state == RUNNING]
            if running:
                raise CalibrationBusy(f"camera {camera_id!r} is already calibrating (job {running[0].id}); wait "
                                      f"for it or cancel it (DELETE /v1/cameras/{camera_id}/calibrations/"
                                      f"{running[0].id})")
            job = CalibrationJob(uuid.uuid4().hex[:12], camera_id, seconds, false_alarms_per_hour,
                                 allow_below_training)
            self.jobs = {**self.jobs, job.id: job}
        threading.Thread(target=self._run, args=(job, cam), name=f"calibrate-{camera_id}", daemon=True).start()
        return job

    def _run(self, job: CalibrationJob, cam: Camera) -> None:
        try:
            scores = self._listen(job, cam)
            if scores is None:
                self._finish(job, CANCELLED)
                return
            job.result = self.cameras.calibrate(job.camera, scores, job.seconds, job.false_alarms_per_hour,
                                                job.allow_below_training)
            self._finish(job, DONE)
        except AmvadError as exc:  # too few frames, the camera deleted meanwhile: reported in the job
            job.error = exc
            self._finish(job, FAILED)
        except Exception as exc:  # a fault of ours: kept in the job (as a 500), and logged with its traceback
            log.exception("camera %s: calibration %s failed", job.camera, job.id)
            job.error = AmvadError(f"calibration failed: {type(exc).__name__}: {exc}")
            self._finish(job, FAILED)

    def _listen(self, job: CalibrationJob, cam: Camera) -> list[float] | None:
        """The scores published during ``job.seconds``; None when cancelled."""
        tap = cam.taps.open()
        t0 = time.monotonic()
        try:
            while (elapsed := time.monotonic() - t0) < job.seconds:
                if job.cancel.wait(min(POLL_S, job.seconds - elapsed)):
                    return None
                if cam.stopped:
                    raise CameraNotLive(f"camera {job.camera!r} was deleted or stopped while calibrating")
                job.elapsed_s, job.frames, job.fps = time.monotonic() - t0, len(tap), cam.fps
            job.elapsed_s, job.frames = job.seconds, len(tap)
        finally:
            cam.taps.close(tap)
        return list(tap)

    def _finish(self, job: CalibrationJob, state: str) -> None:
        job.state, job.finished = state, time.time()
        job.done.set()
        log.info("camera %s: calibration %s %s%s", job.camera, job.id, state,
                 f": {job.error.message}" if job.error else "")
        with self._lock:
            ended = sorted((j for j in self.jobs.values() if j.state != RUNNING), key=lambda j: j.finished or 0.0)
            old = {j.id for j in ended[:max(0, len(ended) - self.keep)]}
            if old:
                self.jobs = {k: j for k, j in self.jobs.items() if k not in old}

    def get(self, camera_id: str, job_id: str) -> CalibrationJob:
        job = self.jobs.get(job_id)
        if job is None or job.camera != camera_id:
            raise UnknownCalibration(f"camera {camera_id!r} has no calibration job {job_id!r}")
        return job

    def of(self, camera_id: str) -> list[CalibrationJob]:
        """The camera's jobs, newest first."""
        return sorted((j for j in self.jobs.values() if j.camera == camera_id), key=lambda j: -j.created)

    def latest(self, camera_id: str) -> CalibrationJob:
        jobs = self.of(camera_id)
        if not jobs:
            raise UnknownCalibration(f"camera {camera_id!r} has no calibration (POST /v1/cameras/{camera_id}/"
                                     f"calibrate starts one)")
        return jobs[0]

    def cancel(self, camera_id: str, job_id: str) -> CalibrationJob:
        """Stop listening; the threshold stays as it was. A finished job is left as it is."""
        job = self.get(camera_id, job_id)
        job.cancel.set()
        job.done.wait(5)
        return job

    def shutdown(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel.set()
