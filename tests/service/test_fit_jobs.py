"""The service's fit jobs, on the fit-job contract (runtime/fit_job.py): the request is written into the
job folder, state, progress and errors are read from the worker's progress record (no log parsing), the
worker survives the request's thread but not the service, an earlier run's folders and workers are
cleared at start, and finished jobs are bounded. Most tests run a stand-in worker (a few lines on the
contract); one runs the real ``amvad fit --job``."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import amvad.service.fit_jobs as fit_jobs
from amvad.runtime.errors import Busy, Invalid, NotFound
from amvad.runtime.fit_job import FitError, JobFolder, read_request, write_pid
from amvad.service.config import ServiceSettings
from amvad.service.fit_jobs import FitBusy, FitJobs, FitRequest, FootageError, UnknownFit
from tests.support.servers import running_service, start_service, stop_process
from tests.support.synthetic import render_clip, write_clip, write_mp4

REPO = Path(__file__).resolve().parents[2]

# A stand-in worker: reads the request, reports training, then does what FAKE_FIT asks.
FAKE_WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from amvad.runtime.fit_job import JobFolder, ProgressWriter, read_request
    folder = Path(sys.argv[1])
    spec = read_request(folder)
    progress = ProgressWriter(JobFolder(folder).progress)
    progress({"stage": "training", "fraction": 0.5, "epoch": 2, "epochs": 9})
    mode = os.environ["FAKE_FIT"]
    if mode.startswith("sleep"):
        time.sleep(float(mode[5:]))
    if mode == "fail":
        progress.fail(ValueError("footage too short: 40 frames (4 s at 10 fps)"))
        sys.exit(2)
    if mode == "crash":
        os._exit(3)
    spec.out.write_bytes(b"onnx")
    progress({"stage": "done", "fraction": 1.0, "result": {"model": str(spec.out), "threshold": 1.0}})
    """)


class Registry:
    """The model registry's part fit jobs use: it takes the model file away, as the real one does."""

    def __init__(self) -> None:
        self.added: dict[str, bytes] = {}

    def add(self, name: str, path: Path, card: str | None = None) -> dict:
        self.added[name] = path.read_bytes()
        path.unlink()
        return {"name": name}


@pytest.fixture
def footage(tmp_path) -> Path:
    """A folder of 340 frame names: enough footage for the service's check (it only counts them)."""
    folder = tmp_path / "media" / "frames"
    folder.mkdir(parents=True)
    for i in range(340):
        (folder / f"{i:04d}.jpg").touch()
    return folder


def make_jobs(tmp_path, monkeypatch, mode: str | None = "done", **limits) -> FitJobs:
    settings = ServiceSettings(state_dir=tmp_path / "state", media_dirs=[tmp_path / "media"],
                               limits=limits, fit={"threads": 1, "nice": 0})
    if mode is not None:
        monkeypatch.setenv("FAKE_FIT", mode)
        monkeypatch.setenv("PYTHONPATH", str(REPO))
        monkeypatch.setattr(fit_jobs, "worker_command", lambda folder: [sys.executable, "-c", FAKE_WORKER, str(folder)])
    return FitJobs(settings, Registry(), recordings=None, events=None)


def wait_finished(job, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while job.state in ("queued", "running"):
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.05)
    return job.status()


def request(footage: Path, name: str = "gate", **kw) -> FitRequest:
    return FitRequest(name=name, footage=[footage.as_uri()], minutes=0.5, base_width=4, max_pixels=1536, **kw)


def test_a_job_writes_its_request_reads_progress_and_registers_the_model(tmp_path, monkeypatch, footage):
    jobs = make_jobs(tmp_path, monkeypatch, "sleep1")
    job = jobs.submit(request(footage, init="ped2", augment=True))
    # the worker got the request through the contract, and its pid is recorded for a restart's clean-up
    spec = read_request(job.folder)
    assert spec.footage == [footage] and spec.out == job.folder / "model.onnx" and spec.init == "ped2"
    assert (spec.minutes, spec.base_width, spec.max_pixels, spec.threads, spec.augment) == (0.5, 4, 1536, 1, True)
    assert int(JobFolder(job.folder).pid.read_text()) == job.proc.pid
    assert job.status()["state"] == "running"
    # a second fit while one runs is refused
    with pytest.raises(FitBusy):
        jobs.submit(request(footage, name="second"))
    # progress comes from the worker's record while it runs
    for _ in range(100):
        if (job.status()["progress"] or {}).get("stage") == "training":
            break
        time.sleep(0.05)
    assert job.status()["progress"]["epoch"] == 2
    status = wait_finished(job)
    assert status["state"] == "done" and status["error"] is None and status["model"] == {"name": "gate"}
    assert status["progress"]["stage"] == "done" and "result" not in status["progress"]
    assert jobs.registry.added == {"gate": b"onnx"}


def test_a_failing_workers_error_arrives_as_structured_data(tmp_path, monkeypatch, footage):
    jobs = make_jobs(tmp_path, monkeypatch, "fail")
    status = wait_finished(jobs.submit(request(footage)))
    assert status["state"] == "failed"
    assert status["error"] == "footage too short: 40 frames (4 s at 10 fps)"
    assert status["error_detail"] == {"kind": "input", "type": "ValueError", "message": status["error"]}
    assert status["progress"]["stage"] == "failed" and status["progress"]["epoch"] == 2
    assert jobs.registry.added == {}


def test_a_worker_that_dies_without_a_word_fails_with_its_exit_status(tmp_path, monkeypatch, footage):
    jobs = make_jobs(tmp_path, monkeypatch, "crash")
    status = wait_finished(jobs.submit(request(footage)))
    assert status["state"] == "failed" and status["error_detail"]["kind"] == "exited"
    assert "exited with status 3" in status["error"]


def test_the_worker_outlives_the_thread_that_asked_for_it(tmp_path, monkeypatch, footage):
    # given a request handled on a short-lived thread (as a thread pool's), the worker it starts
    # must not get the parent-death signal when that thread ends
    jobs = make_jobs(tmp_path, monkeypatch, "sleep1.5")
    box = []
    t = threading.Thread(target=lambda: box.append(jobs.submit(request(footage))))
    t.start()
    t.join()
    assert wait_finished(box[0])["state"] == "done"


def test_cancel_stops_the_worker(tmp_path, monkeypatch, footage):
    jobs = make_jobs(tmp_path, monkeypatch, "sleep30")
    job = jobs.submit(request(footage))
    assert jobs.cancel(job.id).state == "cancelled"
    assert job.proc.wait(5) == -signal.SIGTERM
    assert wait_finished(job)["state"] == "cancelled" and job.error is None


def test_finished_jobs_are_bounded_records_and_folders(tmp_path, monkeypatch, footage):
    jobs = make_jobs(tmp_path, monkeypatch, "done", max_fit_jobs=2)
    done = []
    for i in range(3):
        job = jobs.submit(request(footage, name=f"m{i}"))
        wait_finished(job)
        done.append(job)
    assert list(jobs.jobs) == [done[1].id, done[2].id]
    assert not done[0].folder.exists() and done[1].folder.is_dir() and done[2].folder.is_dir()
    with pytest.raises(UnknownFit):
        jobs.get(done[0].id)
    assert sorted(p.name for p in jobs.dir.iterdir()) == sorted([done[1].id, done[2].id])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_start_up_removes_an_earlier_runs_folders_and_kills_its_worker(tmp_path, monkeypatch):
    # given a job folder of an earlier run whose worker still runs (the service was killed with -9)
    old = tmp_path / "state" / "fits" / "0123456789ab"
    old.mkdir(parents=True)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--job", str(old.resolve())])
    try:
        write_pid(old, worker.pid)
        # when the service builds its fit jobs
        jobs = make_jobs(tmp_path, monkeypatch, None)
        # then the worker is killed and the folder removed
        assert worker.wait(5) == -signal.SIGKILL
        assert not old.exists() and jobs.jobs == {}
        assert jobs.recover() == []  # nothing left the second time
    finally:
        worker.kill()
        worker.wait()


def test_errors_carry_their_status():
    assert issubclass(UnknownFit, NotFound) and issubclass(UnknownFit, LookupError) and UnknownFit.status == 404
    assert issubclass(FitBusy, Busy) and issubclass(FitBusy, RuntimeError) and FitBusy.status == 429
    assert issubclass(FootageError, Invalid) and issubclass(FootageError, ValueError) and FootageError.status == 422


def test_too_little_footage_is_refused_before_a_worker_starts(tmp_path, monkeypatch, footage):
    jobs = make_jobs(tmp_path, monkeypatch)
    for f in list(footage.iterdir())[:100]:
        f.unlink()
    with pytest.raises(FootageError, match="footage too short: 240 frames"):
        jobs.submit(request(footage))
    assert jobs.jobs == {}


def test_the_real_worker_reports_its_error_through_the_contract(tmp_path, monkeypatch):
    # given footage the service's check lets through (here: the check skipped) but the fit refuses
    write_clip(tmp_path / "media" / "cam", render_clip(40, speed=1.0, seed=0))
    monkeypatch.setattr(fit_jobs, "check_fit_footage", lambda frames, fps: None)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.chdir(REPO)
    jobs = make_jobs(tmp_path, monkeypatch, None)
    # when `amvad fit --job DIR` runs it
    status = wait_finished(jobs.submit(request(tmp_path / "media" / "cam")), 120)
    # then its error comes from the progress record, as data
    assert status["state"] == "failed", status
    detail = FitError(**status["error_detail"])
    assert detail.kind == "input" and detail.type == "ValueError"
    assert detail.message.startswith("footage too short: 40 frames (4 s at 10 fps)")


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")
def test_a_fit_dies_with_a_killed_service_and_the_restart_clears_its_folder(tmp_path):
    # given a real service running a real fit
    footage = write_mp4(tmp_path / "normal.mp4", render_clip(400, speed=1.0, seed=4))
    svc = start_service(tmp_path, "ped2", {"media_dirs": [str(tmp_path)]})
    try:
        job = svc.http.post("/v1/models/fit", json={"name": "orphan", "footage": [footage.as_uri()], "minutes": 5})
        assert job.status_code == 202, job.text
        folder = tmp_path / "state" / "fits" / job.json()["id"]
        pid = int(JobFolder(folder).pid.read_text())
        assert Path(f"/proc/{pid}").exists()
        # when the service is killed with SIGKILL (no shutdown of its own)
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(10)
    finally:
        svc.http.close()
        stop_process(svc.proc)
    # then its fit process dies with it
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the fit process outlived its killed service"
        time.sleep(0.1)
    # and the next start removes the earlier run's job folder
    assert folder.is_dir()
    with running_service(tmp_path, "ped2", {"media_dirs": [str(tmp_path)]}) as again:
        assert not folder.exists() and again.http.get("/v1/models/fit").json() == []
