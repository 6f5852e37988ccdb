"""The fit-job contract, in one place for both sides: the service's fit jobs (``service/fit_jobs.py``)
and the worker that runs them (``amvad fit --job DIR``, ``training/fit.py``).

A job is a folder: the service writes ``request.json`` (a :class:`FitSpec`) and ``worker.pid``; the worker
reads the request and keeps ``progress.json`` (a :class:`FitProgress`, replaced atomically) up to date,
ending with stage ``done`` and the fit's result, or ``failed`` and a :class:`FitError`; its console output
goes to ``fit.log`` for people only. The worker dies with the process that started it
(:func:`child_preexec`), and :func:`remove_leftover_jobs` clears the folders (and any worker still running)
of an earlier run. Imports nothing heavy: the service and ``amvad --help`` import it."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .files import write_atomic
from .redact import redact

Method = Literal["comemory", "ammc", "amsrc"]
Init = Literal["none", "ped2"]
METHODS, INITS = get_args(Method), get_args(Init)
DEFAULT_MAX_PIXELS = 128 * 192  # the bundled model's input: real time on 2 CPU cores
DEFAULT_BASE_WIDTH = 12
Stage = Literal["loading", "training", "exporting", "done", "failed"]


class FitSpec(BaseModel):
    """What a fit worker is asked to do (``request.json``); the keyword arguments of ``training.fit.fit``."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    footage: list[Path] = Field(min_length=1, description="video files, folders of videos or of frame images")
    out: Path = Field(description="the exported model (.onnx); its model card is written beside it")
    minutes: float = Field(30.0, gt=0, le=24 * 60, description="training time budget")
    method: Method = "comemory"
    init: Init = Field("none", description="none: random weights; ped2: the bundled model's")
    false_alarms_per_hour: float = Field(1.0, gt=0, description="target rate the threshold is set for")
    base_width: int = Field(DEFAULT_BASE_WIDTH, ge=2, le=64, description="network width")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=32 * 32, le=1024 * 1024, description="input height x width")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: all cores)")
    seed: int = 0
    augment: bool = Field(False, description="also train on a noisy and a compressed copy of the footage, as the "
                                             "default model's recipe does (costs accuracy in a short fit: README)")
    registered_as: str | None = Field(None, max_length=64, description="the name the service registers the model "
                                      "under when the fit succeeds (its card says so); None: the user registers it")


class FitError(BaseModel):
    """Why a fit failed. ``kind``: ``input`` (the footage or the request: fix it and retry), ``internal``
    (a fault of the fit itself) or ``exited`` (the worker ended without saying why: killed, out of memory)."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["input", "internal", "exited"]
    type: str = Field(description="the exception's class name, or 'exit' for a worker that ended silently")
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> FitError:
        kind = "input" if isinstance(exc, (ValueError, FileNotFoundError)) else "internal"
        return cls(kind=kind, type=type(exc).__name__, message=redact(str(exc) or type(exc).__name__)[:2000])

    @classmethod
    def from_exit(cls, returncode: int) -> FitError:
        how = (f"was killed by signal {-returncode} ({signal.Signals(-returncode).name})"
               if returncode < 0 and -returncode in signal.valid_signals() else f"exited with status {returncode}")
        return cls(kind="exited", type="exit", message=f"the fit process {how} without reporting an error")


class FitProgress(BaseModel):
    """The latest state of a fit (``progress.json``): ``fraction`` of the current stage in [0, 1]; the
    training fields while training; ``result`` (the fit's report) once ``done``; ``error`` once ``failed``."""
    model_config = ConfigDict(extra="forbid")
    stage: Stage
    fraction: float = Field(0.0, ge=0, le=1)
    epoch: int | None = None
    epochs: int | None = None
    batch: int | None = None
    batches: int | None = None
    train_seconds: float | None = None
    loss: float | None = None
    lr: float | None = Field(None, description="the learning rate of the latest step")
    updated: float = Field(default_factory=time.time, description="when it was written (Unix seconds)")
    error: FitError | None = None
    result: dict | None = None


@dataclass(frozen=True)
class JobFolder:
    """The files of one job folder."""
    root: Path

    @property
    def request(self) -> Path:
        return self.root / "request.json"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def pid(self) -> Path:
        return self.root / "worker.pid"

    @property
    def log(self) -> Path:
        return self.root / "fit.log"


def write_request(folder: Path, spec: FitSpec) -> None:
    write_atomic(JobFolder(folder).request, spec.model_dump_json(indent=1))


def read_request(folder: Path) -> FitSpec:
    """The job's request; raises ``FileNotFoundError`` or a ``ValueError`` naming what is wrong."""
    return FitSpec.model_validate_json(JobFolder(folder).request.read_text())


def read_progress(path: Path) -> FitProgress | None:
    """The latest progress record, or None before the worker wrote one (or if it is unreadable)."""
    try:
        return FitProgress.model_validate_json(Path(path).read_text())
    except (OSError, ValueError):
        return None


class ProgressWriter:
    """Keeps ``path`` holding the latest :class:`FitProgress`: replaced atomically, at most once a second
    but at every stage change; :meth:`fail` records an error. Pass it as ``fit(on_progress=...)``."""

    def __init__(self, path: Path) -> None:
        self.path, self._written, self.last = Path(path), 0.0, None

    def __call__(self, progress: dict) -> None:
        record = FitProgress(**progress)
        now = time.monotonic()
        if self.last is None or record.stage != self.last.stage or now - self._written >= 1.0:
            self._write(record)
            self._written = now
        self.last = record

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` as the fit's error, keeping how far it got; a write that fails is ignored (the
        watcher then reports the exit status)."""
        last = self.last or FitProgress(stage="loading")
        record = last.model_copy(update={"stage": "failed", "error": FitError.from_exception(exc),
                                         "result": None, "updated": time.time()})
        try:
            self._write(record)
        except OSError as write_error:  # the job folder is gone or full: the exit status still tells
            print(f"cannot record the fit's failure in {self.path}: {write_error}", file=sys.stderr)

    def _write(self, record: FitProgress) -> None:
        write_atomic(self.path, record.model_dump_json(exclude_none=True))


def worker_command(folder: Path) -> list[str]:
    """The command that runs a job folder's request (``amvad fit --job DIR``) with this interpreter."""
    return [sys.executable, "-m", "amvad.cli", "fit", "--job", str(Path(folder).resolve()), "--quiet"]


def write_pid(folder: Path, pid: int) -> None:
    write_atomic(JobFolder(folder).pid, str(pid))


PR_SET_PDEATHSIG = 1


def child_preexec(nice: int = 0) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child runs ``nice`` steps lower and gets SIGKILL
    when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere only the nice level). The signal
    follows the *thread* that started the child, so start it from a thread that outlives it."""
    parent = os.getpid()
    prctl = None
    if sys.platform.startswith("linux"):
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child

    def preexec() -> None:
        if nice:
            os.nice(nice)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the signal was armed
                os.kill(os.getpid(), signal.SIGKILL)
    return preexec


def _worker_of(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` runs and its command line names ``folder`` (a reused pid does not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(Path(folder).resolve()).encode() in cmdline.split(b"\0")


def _kill_worker(folder: Path, wait_s: float = 5.0) -> int | None:
    """SIGKILL the worker recorded in ``folder`` if it still runs for it; its pid, or None."""
    try:
        pid = int(JobFolder(folder).pid.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 1 or pid == os.getpid() or not _worker_of(pid, folder):
        return None
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + wait_s
    while _worker_of(pid, folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def remove_leftover_jobs(fits_dir: Path) -> list[tuple[str, int | None]]:
    """Remove every job folder under ``fits_dir`` (from an earlier run of the service), first killing a
    worker still running for it; (folder name, killed pid or None) for each. One service per state
    directory: a second one started on it would stop the first one's fits."""
    fits_dir = Path(fits_dir)
    if not fits_dir.is_dir():
        return []
    removed = []
    for entry in sorted(fits_dir.iterdir()):
        killed = _kill_worker(entry) if entry.is_dir() else None
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append((entry.name, killed))
    return removed
