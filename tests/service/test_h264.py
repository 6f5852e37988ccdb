"""The one H.264 writer: real PyAV files, timing from capture timestamps, and fragmented MP4 that still
plays when the writer is cut off (kill -9, a copy taken mid-write, a full disk)."""

from __future__ import annotations

import itertools
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from amvad.runtime.errors import Invalid
from amvad.service.h264 import H264Writer, playable_frames, probe
from tests.support.disk import tmpfs

REPO = Path(__file__).resolve().parents[2]


def picture(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A grey frame with a square moving right: cheap to encode, different every frame."""
    img = np.full((h, w, 3), 90, np.uint8)
    x = (3 * i) % (w - 8)
    img[h // 3:h // 3 + 8, x:x + 8] = (230, 40, 40)
    return img


def decoded_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [f.time for f in c.decode(c.streams.video[0])]


def test_round_trip_plays_at_the_capture_rate_whatever_the_nominal_rate(tmp_path):
    # given 30 frames captured 0.1 s apart (10 fps), starting at a wall-clock time
    path, t0 = tmp_path / "a.mp4", 1_764_000_000.0
    with H264Writer(path) as w:
        for i in range(30):
            w.write(t0 + 0.1 * i, picture(i))
        assert w.frames == 30 and w.duration_s == pytest.approx(2.9)
    # then the file holds 30 frames whose presentation times span 2.9 s (real speed), 0.1 s apart
    times = decoded_times(path)
    assert len(times) == 30 and playable_frames(path) == 30
    assert times[-1] - times[0] == pytest.approx(2.9, abs=0.01)
    assert np.allclose(np.diff(times), 0.1, atol=0.002)
    assert probe(path).span_s == pytest.approx(2.9, abs=0.01)


def test_odd_sizes_are_cropped_even_and_a_size_change_is_scaled(tmp_path):
    path = tmp_path / "odd.mp4"
    w = H264Writer(path)
    w.write(0.0, picture(0, 47, 65))
    assert w.size == (64, 46)
    w.write(0.1, picture(1, 30, 40))    # smaller: scaled up to the file's size
    w.write(0.2, picture(2, 100, 120))  # larger: cropped
    w.close()
    with av.open(str(path)) as c:
        frames = list(c.decode(c.streams.video[0]))
    assert [(f.width, f.height) for f in frames] == [(64, 46)] * 3


def test_pts_stay_strictly_increasing_when_timestamps_repeat_or_step_back(tmp_path):
    path = tmp_path / "same.mp4"
    with H264Writer(path) as w:
        for ts in (5.0, 5.0, 5.0, 4.0, 5.5):
            w.write(ts, picture(int(ts * 10)))
    times = decoded_times(path)
    assert len(times) == 5 and all(b > a for a, b in itertools.pairwise(times))


def test_close_is_safe_twice_and_without_frames(tmp_path):
    never = H264Writer(tmp_path / "never.mp4")
    never.close()
    never.close()
    assert not (tmp_path / "never.mp4").exists() and never.frames == 0
    w = H264Writer(tmp_path / "twice.mp4")
    w.write(0.0, picture(0))
    w.close()
    w.close()
    assert playable_frames(tmp_path / "twice.mp4") == 1
    with pytest.raises(Invalid):
        w.write(1.0, picture(1))


def test_bad_pixels_are_refused_and_the_writer_stays_usable(tmp_path):
    w = H264Writer(tmp_path / "x.mp4")
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8)):
        with pytest.raises(Invalid):
            w.write(0.0, bad)
    w.write(0.0, picture(0))
    w.close()
    assert playable_frames(tmp_path / "x.mp4") == 1


def test_a_copy_taken_mid_write_is_playable_up_to_its_last_fragment(tmp_path):
    # given a writer that has written 4 s of frames and was never closed
    path, cut = tmp_path / "live.mp4", tmp_path / "cut.mp4"
    w = H264Writer(path)
    for i in range(40):
        w.write(0.1 * i, picture(i))
    shutil.copyfile(path, cut)  # what a kill -9 right now would leave on disk
    w.close()
    # then the copy (no moov at the end, no trailer) still plays its complete fragments
    n = playable_frames(cut)
    assert 10 <= n < 40
    assert playable_frames(path) == 40


def test_a_writer_killed_with_sigkill_leaves_a_playable_file(tmp_path):
    path = tmp_path / "killed.mp4"
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from amvad.service.h264 import H264Writer
        w = H264Writer({str(path)!r})
        for i in range(50):
            img = np.full((48, 64, 3), 90, np.uint8)
            img[10:18, (3 * i) % 56:(3 * i) % 56 + 8] = 230
            w.write(0.1 * i, img)
        print("written", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert playable_frames(path) >= 20


def test_playable_frames_of_garbage_or_a_missing_file_is_zero(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert playable_frames(tmp_path / "junk.mp4") == 0
    assert playable_frames(tmp_path / "empty.mp4") == 0
    assert playable_frames(tmp_path / "missing.mp4") == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A 200 KiB tmpfs (root only); skipped where mounting is refused."""
    with tmpfs(tmp_path / "tiny", "200k") as mnt:
        yield mnt


def test_a_full_disk_raises_oserror_and_leaves_the_complete_fragments_playable(tiny_disk):
    path = tiny_disk / "full.mp4"
    rng = np.random.default_rng(0)
    w = H264Writer(path)
    with pytest.raises(OSError):
        for i in range(2000):  # noise does not compress: the disk fills within a few seconds of video
            w.write(0.1 * i, rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    w.close()  # safe after the failure
    w.close()
    assert playable_frames(path) > 0


# Memory is measured in a fresh interpreter: glibc's counters and RSS are process-wide.
MEMORY_PROBE = textwrap.dedent("""
    import ctypes, json, os, sys, tempfile, threading, time
    import numpy as np
    from amvad.service.evidence import CLIP_ENCODER
    from amvad.service.h264 import H264Writer

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def in_use_mb():
        m = libc.mallinfo2()
        return (m.uordblks + m.hblkhd) / 2 ** 20

    def rss_mb():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

    def tasks():
        return len(os.listdir("/proc/self/task"))

    def picture(i):  # an evidence-sized frame (360x240) with a moving square
        img = np.full((240, 360, 3), 90, np.uint8)
        img[80:104, (9 * i) % 330:(9 * i) % 330 + 24] = (230, 40, 40)
        return img

    frames, tmp = [picture(i) for i in range(30)], tempfile.mkdtemp()
    what = sys.argv[1]
    if what == "open":  # 4 clips open at once, on this thread
        t0, m0 = tasks(), in_use_mb()
        writers = [H264Writer(f"{tmp}/{k}.mp4", **CLIP_ENCODER) for k in range(4)]
        for i, f in enumerate(frames):
            for w in writers:
                w.write(i / 3, f)
        out = {"mb_per_clip": (in_use_mb() - m0) / 4, "threads_added": tasks() - t0}
        for w in writers:
            w.close()
    else:  # rounds of 16 overlapping clips, each on its own thread (as the clip writers run)
        def clip(name):
            w = H264Writer(f"{tmp}/{name}.mp4")
            for i, f in enumerate(frames):
                w.write(i / 3, f.copy())  # a frame of its own, as each decoded frame is
                time.sleep(0.01)
            w.close()
        before, growth = rss_mb(), []
        for r in range(5):
            ts = [threading.Thread(target=clip, args=(f"{r}-{k}",)) for k in range(16)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            growth.append(rss_mb() - before)
        out = {"rss_growth_mb": growth}
    print(json.dumps(out))
""")


def memory_probe(what: str) -> dict:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's allocator counters are read")
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, what], capture_output=True, text=True, timeout=120,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_clip_encoder_runs_on_its_own_thread_in_a_few_megabytes():
    # given 4 event clips open at once (8 cameras' overlapping events held 16 in the soak)
    got = memory_probe("open")
    # then their encoders start no threads and each holds under 9 MB (libx264's defaults: 6 threads and
    # 15.5 MB each, which the service's RSS kept as a new high-water mark at every peak of open clips)
    assert got["threads_added"] == 0
    assert got["mb_per_clip"] < 9.0, got


def test_memory_freed_by_closed_encoders_goes_back_to_the_os():
    # given five rounds of 16 overlapping clips, each encoded on its own thread (so in many malloc arenas)
    got = memory_probe("rounds")
    # then after a typical round the process's resident memory is back near where it started: the median
    # over the rounds, since one round's figure varies with which arenas hold what at the last close
    # (measured medians 12-29 MB above, single rounds 9-38; without handing the freed pages back, medians
    # 66-78 MB, single rounds 38-114)
    assert statistics.median(got["rss_growth_mb"]) < 45.0, got
