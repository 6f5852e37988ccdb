"""The fit-job contract: the request and progress records round-trip through a job folder, errors are
structured data, a worker dies with its parent, and an earlier run's folders (and workers) are cleared."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from amvad.runtime.fit_job import (
    FitError,
    FitProgress,
    FitSpec,
    JobFolder,
    ProgressWriter,
    read_progress,
    read_request,
    remove_leftover_jobs,
    worker_command,
    write_pid,
    write_request,
)

REPO = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def sleeper(*args: str) -> subprocess.Popen:
    """A process that sleeps a minute, with ``args`` on its command line."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])


def test_request_round_trips_through_the_job_folder(tmp_path):
    spec = FitSpec(footage=[tmp_path / "a.mp4", tmp_path / "frames"], out=tmp_path / "job" / "model.onnx",
                   minutes=0.5, init="ped2", false_alarms_per_hour=2.0, base_width=4, max_pixels=1536, threads=1)
    write_request(tmp_path / "job", spec)
    assert read_request(tmp_path / "job") == spec
    assert JobFolder(tmp_path / "job").request.is_file()
    cmd = worker_command(tmp_path / "job")
    assert cmd[0] == sys.executable and cmd[-3:-1] == ["--job", str((tmp_path / "job").resolve())]


@pytest.mark.parametrize("bad", [{"minutes": 0}, {"init": "imagenet"}, {"footage": []}, {"colour": True},
                                 {"max_pixels": 10}])
def test_a_bad_request_is_refused_naming_the_field(tmp_path, bad):
    with pytest.raises(ValidationError, match=next(iter(bad))):
        FitSpec(**{"footage": [tmp_path], "out": tmp_path / "m.onnx", **bad})


def test_progress_is_throttled_but_every_stage_change_is_written(tmp_path):
    path = tmp_path / "progress.json"
    assert read_progress(path) is None  # before the worker wrote anything
    writer = ProgressWriter(path)
    writer({"stage": "loading", "fraction": 0.0})
    writer({"stage": "training", "fraction": 0.1, "epoch": 1, "epochs": 100, "loss": 0.5, "lr": 5e-4})
    writer({"stage": "training", "fraction": 0.2, "epoch": 2, "epochs": 100, "loss": 0.4})  # within a second
    got = read_progress(path)
    assert (got.stage, got.epoch, got.fraction, got.lr) == ("training", 1, 0.1, 5e-4) and got.error is None
    writer({"stage": "done", "fraction": 1.0, "result": {"threshold": 1.5}})
    assert read_progress(path).result == {"threshold": 1.5}
    path.write_text("{half a record")
    assert read_progress(path) is None


def test_a_failure_is_recorded_as_structured_data_keeping_how_far_it_got(tmp_path):
    writer = ProgressWriter(tmp_path / "progress.json")
    writer({"stage": "training", "fraction": 0.3, "epoch": 3})
    writer.fail(ValueError("footage too short: 40 frames; http://user:secret@cam/x"))
    got = read_progress(tmp_path / "progress.json")
    assert got.stage == "failed" and got.epoch == 3 and got.fraction == 0.3
    assert got.error == FitError(kind="input", type="ValueError",
                                 message="footage too short: 40 frames; http://***@cam/x")
    assert FitError.from_exception(RuntimeError("boom")).kind == "internal"


def test_a_silent_exit_is_described_by_its_status_or_signal():
    assert "signal 9 (SIGKILL)" in FitError.from_exit(-9).message
    assert FitError.from_exit(3).model_dump() == {
        "kind": "exited", "type": "exit", "message": "the fit process exited with status 3 without reporting an error"}


def test_progress_records_refuse_unknown_fields():
    with pytest.raises(ValidationError):
        FitProgress(stage="training", colour="red")


@linux_only
def test_a_child_started_with_the_helper_dies_when_its_parent_is_killed():
    # given a parent process that starts a sleeping child through child_preexec (nice 5)
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        from amvad.runtime.fit_job import child_preexec
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=child_preexec(5))
        print(child.pid, flush=True)
        time.sleep(60)
        """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        assert os.getpriority(os.PRIO_PROCESS, child) == os.getpriority(os.PRIO_PROCESS, 0) + 5
        # when the parent is killed with SIGKILL (no handler, no clean-up of its own)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        # then the child dies too
        assert wait_until(lambda: not alive(child), 10), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()


@linux_only
def test_leftover_job_folders_are_removed_and_their_workers_killed(tmp_path):
    fits = tmp_path / "fits"
    old, other = fits / "a1b2c3", fits / "d4e5f6"
    old.mkdir(parents=True)
    other.mkdir()
    (fits / "stray.tmp").write_text("x")
    worker = sleeper("--job", str(old.resolve()))  # a worker of the earlier run, still running
    unrelated = sleeper()  # a process that reused the pid recorded for the other folder
    try:
        write_pid(old, worker.pid)
        write_pid(other, unrelated.pid)
        removed = remove_leftover_jobs(fits)
        assert sorted(removed) == [("a1b2c3", worker.pid), ("d4e5f6", None), ("stray.tmp", None)]
        assert worker.wait(5) == -signal.SIGKILL
        assert unrelated.poll() is None  # its command line does not name the folder: left alone
        assert list(fits.iterdir()) == []
        assert remove_leftover_jobs(tmp_path / "none") == []
    finally:
        for p in (worker, unrelated):
            p.kill()
            p.wait()
