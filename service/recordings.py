"""Recordings: a live camera's decoded frames kept as H.264 segments, the footage a fit learns from.

``POST /v1/cameras/{id}/recordings {"seconds": N}`` starts a :class:`Recorder` that the camera's ingest
thread hands every decoded frame to (a bounded queue: a slow disk drops recording frames, never camera
frames). It encodes in its own thread into ``<state_dir>/recordings/<id>/000.mp4, 001.mp4, ...`` (one
segment per ``SEGMENT_S`` seconds) and describes itself in ``recording.json`` beside them, so the list
survives a restart.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np

from runtime.files import write_atomic
from runtime.types import Frame

log = logging.getLogger("amvad.recordings")
SEGMENT_S = 60.0
RECORDING, DONE, FAILED = "recording", "done", "failed"


class UnknownRecording(LookupError):
    """A recording id that does not exist (HTTP 404)."""


class RecordingBusy(RuntimeError):
    """A recording that is still being written (HTTP 409)."""


@dataclass
class Recording:
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

    def to_dict(self, folder: Path | None = None) -> dict:
        out = asdict(self)
        if folder is not None:
            out["bytes"] = sum((folder / s).stat().st_size for s in self.segments if (folder / s).is_file())
        return out


class Recorder(threading.Thread):
    """Encodes the frames it is offered until ``recording.seconds`` of them (by capture time) are in."""

    def __init__(self, rec: Recording, folder: Path, on_end) -> None:
        super().__init__(name=f"recorder-{rec.id}", daemon=True)
        self.rec, self.folder, self._on_end = rec, folder, on_end
        self._frames: queue.Queue[Frame | None] = queue.Queue(maxsize=64)
        self._stop = threading.Event()

    def offer(self, frame: Frame) -> None:
        """From the camera's ingest thread: never blocks; a full queue drops this recording's frame."""
        try:
            self._frames.put_nowait(frame)
        except queue.Full:
            self.rec.dropped += 1

    def stop(self) -> None:
        self._stop.set()

    @property
    def finished(self) -> bool:
        return self.rec.state != RECORDING

    def run(self) -> None:
        rec, out, stream = self.rec, None, None
        first_ts, per_segment = None, max(1, round(SEGMENT_S * rec.fps))
        deadline = time.monotonic() + rec.seconds + 30  # a stalled camera ends the recording too
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    frame = self._frames.get(timeout=0.5)
                except queue.Empty:
                    continue
                first_ts = frame.timestamp if first_ts is None else first_ts
                if frame.timestamp - first_ts >= rec.seconds:
                    break
                if rec.frames % per_segment == 0:  # a new segment
                    if out is not None:
                        self._close(out, stream)
                    out, stream = self._open(len(rec.segments), frame.pixels)
                picture = frame.pixels[: stream.height, : stream.width]
                out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")))
                rec.frames += 1
            if out is not None:
                self._close(out, stream)
            rec.state = DONE if rec.frames else FAILED
            rec.error = None if rec.frames else "no frame arrived while recording"
        except Exception as exc:  # disk full, encoder failure: the recording fails, the camera goes on
            log.exception("recording %s of camera %s failed", rec.id, rec.camera)
            rec.state, rec.error = FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            self._on_end(self)

    def _open(self, index: int, pixels: np.ndarray):
        name = f"{index:03d}.mp4"
        out = av.open(str(self.folder / name), "w")
        stream = out.add_stream("libx264", rate=max(1, round(self.rec.fps)))
        stream.height, stream.width = pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2  # yuv420p needs even
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20"}
        self.rec.segments.append(name)
        return out, stream

    @staticmethod
    def _close(out, stream) -> None:
        out.mux(stream.encode())
        out.close()


class Recordings:
    """All recordings on disk, and the recorders still writing."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "recordings"
        self._active: dict[str, Recorder] = {}
        self._lock = threading.Lock()
        self._cleanup_interrupted()

    def start(self, camera: str, seconds: float, fps: float) -> Recorder:
        rec = Recording(uuid.uuid4().hex[:12], camera, seconds, time.time(), fps)
        folder = self.dir / rec.id
        folder.mkdir(parents=True)
        recorder = Recorder(rec, folder, self._ended)
        with self._lock:
            self._active[rec.id] = recorder
        self._save(rec)
        recorder.start()
        return recorder

    def _ended(self, recorder: Recorder) -> None:
        with self._lock:
            self._active.pop(recorder.rec.id, None)
        if (self.dir / recorder.rec.id).is_dir():
            self._save(recorder.rec)

    def _save(self, rec: Recording) -> None:
        write_atomic(self.dir / rec.id / "recording.json", json.dumps(asdict(rec)))

    def get(self, rec_id: str) -> Recording:
        with self._lock:
            if rec_id in self._active:
                return self._active[rec_id].rec
        path = self.dir / rec_id / "recording.json"
        if "/" in rec_id or rec_id.startswith(".") or not path.is_file():
            raise UnknownRecording(f"no recording with id {rec_id!r}")
        return Recording(**json.loads(path.read_text()))

    def list(self, camera: str | None = None) -> list[dict]:
        ids = sorted(p.parent.name for p in self.dir.glob("*/recording.json")) if self.dir.is_dir() else []
        recs = [self.get(i) for i in ids]
        return [r.to_dict(self.dir / r.id) for r in sorted(recs, key=lambda r: r.started)
                if camera is None or r.camera == camera]

    def describe(self, rec_id: str) -> dict:
        return self.get(rec_id).to_dict(self.dir / rec_id)

    def segment(self, rec_id: str, index: int) -> Path:
        rec = self.get(rec_id)
        if rec.state == RECORDING and index >= len(rec.segments) - 1:
            raise RecordingBusy(f"segment {index} of recording {rec_id} is still being written")
        if not 0 <= index < len(rec.segments):
            raise UnknownRecording(f"recording {rec_id} has no segment {index} ({len(rec.segments)} segments)")
        return self.dir / rec_id / rec.segments[index]

    def footage(self, rec_id: str) -> tuple[list[Path], int, float]:
        """(segment files, frames, fps) of a finished recording, for a fit."""
        rec = self.get(rec_id)
        if rec.state != DONE:
            raise RecordingBusy(f"recording {rec_id} is {rec.state}; only finished recordings can be fitted on")
        return [self.dir / rec_id / s for s in rec.segments], rec.frames, rec.fps

    def delete(self, rec_id: str) -> None:
        rec = self.get(rec_id)
        with self._lock:
            recorder = self._active.get(rec_id)
        if recorder is not None:
            recorder.stop()
            recorder.join(10)
        shutil.rmtree(self.dir / rec.id, ignore_errors=True)

    def stop_all(self) -> None:
        with self._lock:
            recorders = list(self._active.values())
        for r in recorders:
            r.stop()
        for r in recorders:
            r.join(10)

    def _cleanup_interrupted(self) -> None:
        """A recording that was being written when the service stopped: its last segment was never
        finalised (unreadable MP4), so it is dropped and the recording ends with what was complete."""
        for meta in self.dir.glob("*/recording.json") if self.dir.is_dir() else []:
            rec = Recording(**json.loads(meta.read_text()))
            if rec.state == RECORDING:
                if rec.segments:
                    (meta.parent / rec.segments.pop()).unlink(missing_ok=True)
                rec.state = DONE if rec.segments else FAILED
                rec.error = "interrupted by a restart; the unfinished last segment was dropped"
                rec.frames = min(rec.frames, len(rec.segments) * max(1, round(SEGMENT_S * rec.fps)))
                self._save(rec)
