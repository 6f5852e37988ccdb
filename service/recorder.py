"""One recording being written: :class:`Recorder` takes a camera's decoded frames (never blocking the
camera), encodes them in its own thread as H.264 segments of ``SEGMENT_S`` seconds of capture time, and
measures the frame rate from the capture timestamps. :class:`Recording` is what ``recording.json`` holds.
The set of recordings on disk, their bounds and repair are ``service/recordings.py``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from amvad.runtime.types import Frame

from .h264 import H264Writer

log = logging.getLogger("amvad.recordings")
SEGMENT_S = 60.0        # capture seconds per segment file
STALL_S = 30.0          # a camera that delivers nothing for this long past the end ends the recording too
CHECK_EVERY_S = 0.5     # capture seconds between checks of the byte limit
FPS_EVERY_S = 5.0       # capture seconds between updates of the shown frame rate (a median over all frames)
QUEUE_FRAMES = 32       # frames waiting for the encoder; more are dropped (counted in ``dropped``)
RECORDING, DONE, FAILED = "recording", "done", "failed"


@dataclass
class Recording:
    """What ``recording.json`` holds and the API shows; ``fps`` is measured from capture timestamps once
    frames arrive; ``note`` says why a recording ended early but is still usable."""
    id: str
    camera: str
    seconds: float
    started: float
    fps: float
    state: str = RECORDING
    frames: int = 0
    dropped: int = 0
    segments: list[str] = field(default_factory=list)
    error: str | None = None
    note: str | None = None

    @classmethod
    def from_dict(cls, raw: dict) -> Recording:
        """From ``recording.json``; keys of other versions are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def to_dict(self, folder: Path | None = None) -> dict:
        out = asdict(self)
        if folder is not None:
            out["bytes"] = folder_bytes(folder, self.segments)
        return out


def folder_bytes(folder: Path, names: list[str] | None = None) -> int:
    """Bytes of the files ``names`` in ``folder`` (all its files when None); missing files count 0."""
    total = 0
    try:
        entries = [folder / n for n in names] if names is not None else list(folder.iterdir())
    except OSError:
        return 0
    for path in entries:
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


def fps_of(intervals: array) -> float | None:
    """Frames per second from the intervals (s) between consecutive capture timestamps: the median, so a
    connect burst (frames arriving at once) or a few drops do not set the rate; None without intervals."""
    positive = np.array(intervals, dtype=np.float64)
    positive = positive[positive > 0]
    return round(float(1.0 / np.median(positive)), 3) if positive.size else None


class Recorder:
    """Encodes the frames it is offered, in its own thread, until ``rec.seconds`` of capture time are in,
    it is stopped, the byte limit is reached, or the camera stalls. It always ends in ``done`` or ``failed``
    (with ``error``) and then calls ``on_end(recorder)``; ``save(rec)`` is asked to persist progress at each
    new segment and must not raise."""

    def __init__(self, rec: Recording, folder: Path, on_end: Callable[[Recorder], None], *,
                 save: Callable[[Recording], None] = lambda rec: None,
                 over_budget: Callable[[], bool] = lambda: False,
                 writer: Callable[[Path], H264Writer] = H264Writer) -> None:
        self.rec, self.folder = rec, folder
        self._on_end, self._save, self._over_budget, self._new_writer = on_end, save, over_budget, writer
        self._frames: queue.Queue[Frame] = queue.Queue(maxsize=QUEUE_FRAMES)
        self._halt = threading.Event()  # not ``_stop``: a Thread subclass must not shadow Thread._stop
        self._thread = threading.Thread(target=self._run, name=f"recorder-{rec.id}", daemon=True)
        self._writer: H264Writer | None = None
        self._closed_bytes = 0
        self._intervals = array("d")

    # -- from other threads -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def offer(self, frame: Frame) -> None:
        """From the camera's ingest thread: never blocks; a full queue drops this recording's frame."""
        if self.finished:
            return
        try:
            self._frames.put_nowait(frame)
        except queue.Full:
            self.rec.dropped += 1

    def stop(self) -> None:
        """Ask the recording to end now with what it has (it ends ``done`` if it has frames)."""
        self._halt.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def finished(self) -> bool:
        return self.rec.state != RECORDING

    @property
    def bytes_written(self) -> int:
        """Bytes of this recording's segments on disk (the open one as far as flushed)."""
        writer = self._writer
        current = 0
        if writer is not None:
            try:
                current = writer.path.stat().st_size
            except OSError:
                pass
        return self._closed_bytes + current

    # -- the recorder's thread ---------------------------------------------------------------------
    def _run(self) -> None:
        rec = self.rec
        try:
            note = self._record()
            self._close_segment()
            if rec.frames:
                rec.state, rec.note = DONE, note
            else:
                rec.state, rec.error = FAILED, note or "no frame arrived while recording"
        except Exception as exc:  # disk full, encoder failure: the recording fails, the camera goes on
            log.exception("recording %s of camera %s failed", rec.id, rec.camera)
            self._abandon_segment()
            rec.state, rec.error = FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            rec.fps = fps_of(self._intervals) or rec.fps
            self._drain()
            try:
                self._on_end(self)
            except Exception:
                log.exception("recording %s: bookkeeping at its end failed", rec.id)

    def _record(self) -> str | None:
        """Write frames until the recording is complete (None) or ends early (the reason, a note)."""
        rec = self.rec
        first_ts = segment_ts = last_ts = checked_ts = rated_ts = None
        deadline = time.monotonic() + rec.seconds + STALL_S
        while not self._halt.is_set():
            if time.monotonic() > deadline:
                return f"the camera stopped delivering frames after {rec.frames} frames"
            try:
                frame = self._frames.get(timeout=0.5)
            except queue.Empty:
                continue
            ts = frame.timestamp
            first_ts = ts if first_ts is None else first_ts
            if ts - first_ts >= rec.seconds:
                return None
            if self._writer is None or ts - segment_ts >= SEGMENT_S:
                self._close_segment()
                self._open_segment()
                segment_ts = ts
            self._writer.write(ts, frame.pixels)
            rec.frames += 1
            if last_ts is not None:
                self._intervals.append(ts - last_ts)
            last_ts = ts
            if rated_ts is None or ts - rated_ts >= FPS_EVERY_S or rec.frames == 10:
                rated_ts, rec.fps = ts, fps_of(self._intervals) or rec.fps
            if checked_ts is None or ts - checked_ts >= CHECK_EVERY_S:
                checked_ts = ts
                if self._over_budget():
                    return f"stopped after {ts - first_ts:.1f} s: recordings reached their size limit"
        return f"stopped after {(last_ts - first_ts) if last_ts is not None else 0:.1f} s of {rec.seconds:g} s"

    def _drain(self) -> None:
        """Let go of frames offered after the end (the camera may hold this recorder a while longer)."""
        try:
            while True:
                self._frames.get_nowait()
        except queue.Empty:
            pass

    def _open_segment(self) -> None:
        name = f"{len(self.rec.segments):03d}.mp4"
        self._writer = self._new_writer(self.folder / name)
        self.rec.segments.append(name)
        self._save(self.rec)  # a restart finds the segment even if it never ends

    def _close_segment(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            finally:
                self._closed_bytes += folder_bytes(self.folder, [writer.path.name])

    def _abandon_segment(self) -> None:
        """After an error: keep what the open segment has on disk, release it; never raises."""
        try:
            self._close_segment()
        except Exception as exc:
            log.info("recording %s: closing its segment after the error failed too: %s", self.rec.id, exc)
