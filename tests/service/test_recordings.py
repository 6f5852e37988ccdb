"""Recordings: frame rate and segments from capture timestamps, bounds (count and bytes), stop/delete of an
active recording (the old ``Thread._stop`` clash), failures that end a recording cleanly, and start-up
repair of recordings a kill -9 cut off. Real files, real PyAV, no camera: frames are offered directly."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import amvad.service.recorder as recorder_mod
from amvad.runtime.errors import Busy, Conflict, NotFound, StorageFull
from amvad.runtime.types import Frame
from amvad.service.config import LimitsConfig
from amvad.service.h264 import H264Writer, playable_frames, probe
from amvad.service.recordings import (
    DONE,
    FAILED,
    RECORDING,
    Recorder,
    Recording,
    RecordingBusy,
    Recordings,
    RecordingsFull,
    TooManyRecordings,
    UnknownRecording,
)
from amvad.service.state import StatePaths
from tests.support.disk import tmpfs


def frame(i: int, ts: float, shape=(48, 64), noise: np.random.Generator | None = None) -> Frame:
    h, w = shape
    if noise is not None:
        pixels = noise.integers(0, 255, (h, w, 3), dtype=np.uint8)
    else:
        pixels = np.full((h, w, 3), 90, np.uint8)
        pixels[h // 3:h // 3 + 8, (3 * i) % (w - 8):(3 * i) % (w - 8) + 8] = 230
    return Frame("cam", i, 0, ts, pixels)


def feed(recorder: Recorder, frames, *, keep_up: bool = True) -> None:
    """Offer frames; ``keep_up`` waits for room in the recorder's queue (a camera at the encoder's pace)."""
    for f in frames:
        while keep_up and recorder._frames.full() and not recorder.finished:
            time.sleep(0.005)
        recorder.offer(f)


def wait_end(recorder: Recorder, timeout: float = 20.0) -> Recording:
    recorder.join(timeout)
    assert not recorder.is_alive(), "the recorder thread did not end"
    return recorder.rec


def make(tmp_path: Path, **limits) -> Recordings:
    return Recordings(StatePaths(tmp_path / "state"), LimitsConfig(**limits))


def test_errors_carry_their_http_status():
    assert issubclass(UnknownRecording, NotFound) and UnknownRecording.status == 404
    assert issubclass(RecordingBusy, Conflict) and RecordingBusy.status == 409
    assert issubclass(TooManyRecordings, Busy) and TooManyRecordings.status == 429
    assert issubclass(RecordingsFull, StorageFull) and RecordingsFull.status == 507


def test_fps_comes_from_timestamps_not_from_a_connect_burst(tmp_path):
    # given a camera that measured 529 fps because 25 frames, captured 0.1 s apart, arrived at once
    recs = make(tmp_path)
    recorder = recs.start("cam", 3.0, fps=529.0)
    for i in range(25):
        recorder.offer(frame(i, 100.0 + 0.1 * i))  # no waiting: the whole burst is in the queue at once
    recorder.offer(frame(30, 103.0))  # capture time passes the 3 s: the recording is complete
    rec = wait_end(recorder)
    # then the recording says 10 fps and its segment plays the 2.4 s it spans, not 25/529 s
    assert rec.state == DONE and rec.error is None and rec.note is None
    assert rec.frames == 25 and rec.dropped == 0
    assert rec.fps == pytest.approx(10.0, abs=0.01)
    saved = json.loads((recs.dir / rec.id / "recording.json").read_text())
    assert saved["state"] == DONE and saved["fps"] == pytest.approx(10.0, abs=0.01)
    segment = recs.segment(rec.id, 0)
    assert probe(segment).frames == 25 and probe(segment).span_s == pytest.approx(2.4, abs=0.01)
    segs, frames, fps = recs.footage(rec.id)
    assert segs == [segment] and frames == 25 and fps == pytest.approx(10.0, abs=0.01)


def test_the_median_interval_ignores_a_burst_at_the_start(tmp_path):
    recs = make(tmp_path)
    recorder = recs.start("cam", 5.0, fps=529.0)
    burst = [frame(i, 10.0 + 0.002 * i) for i in range(10)]  # stamped on arrival, 2 ms apart
    steady = [frame(10 + i, 10.02 + 0.2 * (i + 1)) for i in range(20)]  # then 5 fps
    feed(recorder, [*burst, *steady, frame(99, 16.0)])
    rec = wait_end(recorder)
    assert rec.state == DONE and rec.frames == 30 and rec.fps == pytest.approx(5.0, abs=0.01)


def test_segments_are_cut_by_capture_time(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_mod, "SEGMENT_S", 1.0)
    recs = make(tmp_path)
    recorder = recs.start("cam", 10.0, fps=10.0)
    # 25 frames at 10 fps, then a gap (a reconnect): capture time, not the frame count, cuts segments
    feed(recorder, [frame(i, 0.1 * i) for i in range(25)] + [frame(25, 5.0), frame(26, 11.0)])
    rec = wait_end(recorder)
    assert rec.state == DONE and rec.frames == 26
    assert rec.segments == ["000.mp4", "001.mp4", "002.mp4", "003.mp4"]
    assert [playable_frames(recs.dir / rec.id / s) for s in rec.segments] == [10, 10, 5, 1]


def test_offer_never_blocks_and_counts_what_it_drops(tmp_path):
    recs = make(tmp_path)
    gate = threading.Event()

    class SlowWriter(H264Writer):
        def write(self, ts, pixels):
            gate.wait(10)
            super().write(ts, pixels)

    rec = Recording("slow0", "cam", 100.0, time.time(), 10.0)
    (recs.dir / rec.id).mkdir(parents=True)
    recorder = Recorder(rec, recs.dir / rec.id, lambda r: None, writer=SlowWriter)
    recorder.start()
    t = time.monotonic()
    for i in range(200):
        recorder.offer(frame(i, 0.1 * i))
    assert time.monotonic() - t < 0.5
    assert rec.dropped >= 200 - recorder_mod.QUEUE_FRAMES - 1
    gate.set()
    recorder.stop()
    assert wait_end(recorder).state == DONE


def test_stop_and_delete_of_an_active_recording(tmp_path):
    # the old Recorder overrode Thread._stop: join() and shutdown raised "'Event' object is not callable"
    recs = make(tmp_path)
    first, second = recs.start("cam", 60.0, fps=10.0), recs.start("cam", 60.0, fps=10.0)
    feed(first, [frame(i, 0.1 * i) for i in range(5)])
    feed(second, [frame(i, 0.1 * i) for i in range(5)])
    time.sleep(0.3)
    assert recs.get(first.rec.id).state == RECORDING
    with pytest.raises(RecordingBusy):
        recs.footage(first.rec.id)
    with pytest.raises(RecordingBusy):
        recs.segment(first.rec.id, 0)  # still being written

    recs.delete(first.rec.id)
    assert not first.is_alive() and not (recs.dir / first.rec.id).exists()
    with pytest.raises(UnknownRecording):
        recs.get(first.rec.id)

    recs.stop_all()  # what SIGTERM runs
    rec = wait_end(second, 1.0)
    assert rec.state == DONE and rec.frames == 5 and "stopped after" in rec.note
    assert recs.describe(rec.id)["state"] == DONE and recs.describe(rec.id)["bytes"] > 0
    assert [r["id"] for r in recs.list("cam")] == [rec.id] and recs.list("other") == []


def test_unknown_ids_and_segments_are_not_found(tmp_path):
    recs = make(tmp_path)
    for bad in ("nope", "../state", ".hidden", "a/b", "x" * 100):
        with pytest.raises(UnknownRecording):
            recs.get(bad)
        with pytest.raises(UnknownRecording):
            recs.delete(bad)
    recorder = recs.start("cam", 1.0)
    feed(recorder, [frame(0, 0.0), frame(1, 0.5), frame(2, 2.0)])
    rec = wait_end(recorder)
    for index in (-1, 1, 10 ** 30):
        with pytest.raises(UnknownRecording):
            recs.segment(rec.id, index)


def test_at_most_max_recordings_are_written_at_once(tmp_path):
    recs = make(tmp_path, max_recordings=2)
    a, b = recs.start("cam", 60.0), recs.start("cam", 60.0)
    with pytest.raises(TooManyRecordings, match="max_recordings"):
        recs.start("cam", 60.0)
    a.stop()
    wait_end(a)
    c = recs.start("cam", 60.0)  # a slot is free again
    recs.stop_all()
    assert {wait_end(r, 1.0).state for r in (a, b, c)} == {FAILED}  # none had a frame


def test_a_new_recording_is_refused_when_recordings_hold_the_byte_limit(tmp_path):
    recs = make(tmp_path, max_recordings_mb=0.01)  # 10 KiB
    recorder = recs.start("cam", 1.0)
    feed(recorder, [frame(i, 0.1 * i, noise=np.random.default_rng(i)) for i in range(12)])
    assert wait_end(recorder).state == DONE
    with pytest.raises(RecordingsFull, match="max_recordings_mb"):
        recs.start("cam", 1.0)
    recs.delete(recorder.rec.id)
    recs.stop_all()
    recs.start("cam", 1.0).stop()  # room again


def test_a_running_recording_stops_at_the_byte_limit(tmp_path):
    recs = make(tmp_path, max_recordings_mb=0.1)  # 100 KiB; noise frames are ~20 KiB each
    recorder = recs.start("cam", 60.0)
    rng = np.random.default_rng(0)
    feed(recorder, (frame(i, 0.1 * i, shape=(96, 128), noise=rng) for i in range(300)))
    rec = wait_end(recorder)
    assert rec.state == DONE and "size limit" in rec.note
    assert rec.frames < 300
    assert sum(playable_frames(recs.dir / rec.id / s) for s in rec.segments) == rec.frames


class FailingWriter(H264Writer):
    """Writes two frames, then the disk is full."""

    def write(self, ts, pixels):
        if self.frames >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(ts, pixels)


def test_a_writer_failure_ends_the_recording_failed_with_the_reason(tmp_path):
    recs = make(tmp_path)
    rec = Recording("fail0", "cam", 10.0, time.time(), 10.0)
    folder = recs.dir / rec.id
    folder.mkdir(parents=True)
    ended = []
    recorder = Recorder(rec, folder, ended.append, writer=FailingWriter)
    recorder.start()
    feed(recorder, [frame(i, 0.1 * i) for i in range(10)])
    assert wait_end(recorder).state == FAILED
    assert "No space left" in rec.error and rec.frames == 2 and ended == [recorder]
    assert playable_frames(folder / rec.segments[0]) == 2  # what was written before the failure plays
    recorder.offer(frame(11, 5.0))  # a camera still holding the recorder: ignored, no error


@pytest.fixture
def tiny_state(tmp_path):
    """A state directory on a 256 KiB tmpfs (root only); skipped where mounting is refused."""
    with tmpfs(tmp_path / "tiny", "256k") as mnt:
        yield mnt


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the disk is full."""
    with open(path, "ab") as f:
        try:
            while True:
                f.write(bytes(16 * 1024))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_disk_full_while_recording_ends_failed_and_the_status_is_saved_once_there_is_room(tiny_state):
    # given a recording on a disk that fills up while it writes (no byte limit of ours in the way)
    recs = Recordings(StatePaths(tiny_state), LimitsConfig(max_recordings_mb=1000))
    filler = tiny_state / "filler"
    filler.write_bytes(bytes(128 * 1024))
    recorder = recs.start("cam", 600.0)
    rng = np.random.default_rng(1)
    feed(recorder, (frame(i, 0.1 * i, shape=(120, 160), noise=rng) for i in range(3000)))
    rec = wait_end(recorder)
    # then it ends failed with the reason; the thread is gone; its in-memory status is right although
    # recording.json could not be written
    assert rec.state == FAILED and "No space left" in rec.error
    meta = recs.dir / rec.id / "recording.json"
    assert json.loads(meta.read_text())["state"] == RECORDING
    assert recs.get(rec.id).state == FAILED and recs.list()[0]["state"] == FAILED
    assert playable_frames(recs.dir / rec.id / rec.segments[0]) > 0
    # when space returns, the next read saves the status the disk refused
    filler.unlink()
    assert recs.list()[0]["state"] == FAILED
    assert json.loads(meta.read_text())["state"] == FAILED
    # and a recording asked for on a full disk is refused with 507, leaving nothing behind
    fill(filler)
    with pytest.raises(StorageFull, match="disk is full"):
        recs.start("cam", 1.0)
    assert [r["id"] for r in recs.list()] == [rec.id] and recs._active == {}


def test_start_on_a_read_only_disk_is_unavailable_and_leaves_nothing(tiny_state):
    recs = Recordings(StatePaths(tiny_state), LimitsConfig())
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_state)], check=True)
    try:
        with pytest.raises(Exception) as err:
            recs.start("cam", 1.0)
        assert getattr(err.value, "status", None) == 503 and "Read-only" in str(err.value)
        assert recs.list() == [] and recs._active == {}
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_state)], check=True)


def test_restart_repairs_a_recording_cut_off_by_kill_9(tmp_path):
    # given what a kill -9 leaves: recording.json still "recording, 0 frames, one segment", a complete
    # first segment, a second one cut mid-write (not in the json yet), a third that never got a fragment
    recs = make(tmp_path)
    folder = recs.dir / "cut0"
    folder.mkdir(parents=True)
    with H264Writer(folder / "000.mp4") as w:
        for i in range(20):
            w.write(0.1 * i, frame(i, 0).pixels)
    live = H264Writer(tmp_path / "live.mp4")
    for i in range(40):
        live.write(2.0 + 0.1 * i, frame(i, 0).pixels)
    shutil.copyfile(tmp_path / "live.mp4", folder / "001.mp4")
    live.close()
    (folder / "002.mp4").write_bytes(b"\x00\x00\x00\x1cftypisom" + bytes(100))
    stale = Recording("cut0", "cam", 60.0, time.time(), 529.0, segments=["000.mp4"])
    (folder / "recording.json").write_text(json.dumps(stale.to_dict()))
    (recs.dir / "orphan1").mkdir()  # a folder without recording.json

    # when the service starts again
    rec = make(tmp_path).get("cut0")
    # then the playable segments are kept with their real frame count and rate, the rest removed
    cut_frames = playable_frames(folder / "001.mp4")
    assert 0 < cut_frames < 40
    assert rec.state == DONE and rec.segments == ["000.mp4", "001.mp4"]
    assert rec.frames == 20 + cut_frames and "interrupted" in rec.note
    assert rec.fps == pytest.approx(10.0, abs=0.05)
    assert not (folder / "002.mp4").exists() and not (recs.dir / "orphan1").exists()
    assert json.loads((folder / "recording.json").read_text())["state"] == DONE


def test_restart_fails_a_recording_with_nothing_playable(tmp_path):
    recs = make(tmp_path)
    folder = recs.dir / "cut1"
    folder.mkdir(parents=True)
    (folder / "000.mp4").write_bytes(b"")
    stale = Recording("cut1", "cam", 60.0, time.time(), 10.0, segments=["000.mp4"])
    (folder / "recording.json").write_text(json.dumps(stale.to_dict()))
    rec = make(tmp_path).get("cut1")
    assert rec.state == FAILED and rec.frames == 0 and rec.segments == [] and "interrupted" in rec.error
    recs.delete("cut1")
    assert not folder.exists()
