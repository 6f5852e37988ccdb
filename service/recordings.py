"""Recordings: a live camera's decoded frames kept as H.264 segments, the footage a fit learns from.

``POST /v1/cameras/{id}/recordings {"seconds": N}`` starts a :class:`Recorder` that the camera's ingest
thread hands every decoded frame to (a bounded queue: a slow disk drops recording frames, never camera
frames). It encodes in its own thread into ``<state>/recordings/<id>/000.mp4, 001.mp4, ...`` (one segment
per ``SEGMENT_S`` seconds of capture time, fragmented MP4 by :class:`~service.h264.H264Writer`, so a cut-off
segment still plays) and describes itself in ``recording.json`` beside them, so the list survives a
restart. The frame rate a recording reports is measured from the frames' capture timestamps.

Bounds (``limits``): at most ``max_recordings`` written at once (429), none started while all recordings
together hold ``max_recordings_mb`` (507), and a running one stops (done, with a note) when they reach it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from amvad.runtime.errors import Busy, Conflict, NotFound, StorageFull
from amvad.runtime.files import write_atomic

from .config import LimitsConfig
from .disk import storage_error
from .h264 import probe
from .recorder import DONE, FAILED, RECORDING, SEGMENT_S, Recorder, Recording, folder_bytes
from .state import StatePaths

log = logging.getLogger("amvad.recordings")
__all__ = ["DONE", "FAILED", "RECORDING", "SEGMENT_S", "Recorder", "Recording", "RecordingBusy", "Recordings",
           "RecordingsFull", "TooManyRecordings", "UnknownRecording"]
MB = 2 ** 20
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class UnknownRecording(NotFound):
    """A recording id (or segment) that does not exist."""


class RecordingBusy(Conflict):
    """A recording that is still being written, or not in the state the request needs."""


class TooManyRecordings(Busy):
    """``limits.max_recordings`` recordings are being written already."""


class RecordingsFull(StorageFull):
    """All recordings together hold ``limits.max_recordings_mb`` already."""


class Recordings:
    """All recordings on disk (``paths.recordings``), and the recorders still writing."""

    def __init__(self, paths: StatePaths, limits: LimitsConfig) -> None:
        self.dir = paths.recordings
        self.max_active = limits.max_recordings
        self.max_bytes = int(limits.max_recordings_mb * MB)
        self._active: dict[str, Recorder] = {}
        self._unsaved: dict[str, Recording] = {}  # ended, but recording.json could not be written yet
        self._finished_bytes: int | None = None  # bytes of the recordings not being written (cache)
        self._lock = threading.RLock()
        self._cleanup_interrupted()

    # -- starting and ending -------------------------------------------------------------------
    def start(self, camera: str, seconds: float, fps: float | None = None) -> Recorder:
        """Start recording ``camera`` for ``seconds`` of capture time; ``fps`` is only shown until the
        frames' timestamps give the rate. Raises TooManyRecordings (429), RecordingsFull (507), or
        StorageFull / Unavailable when the folder cannot be written."""
        with self._lock:
            if len(self._active) >= self.max_active:
                raise TooManyRecordings(f"{len(self._active)} recordings are being written already (the limit, "
                                        f"limits.max_recordings, is {self.max_active}); try again when one ends")
            used = sum(folder_bytes(f) for f in self._folders())
            if used >= self.max_bytes:
                raise RecordingsFull(f"recordings hold {used / MB:.0f} MB, the limit (limits.max_recordings_mb) "
                                     f"is {self.max_bytes / MB:g} MB; delete some first")
            rec = Recording(uuid.uuid4().hex[:12], camera, seconds, time.time(), round(float(fps or 0.0), 3))
            folder = self.dir / rec.id
            try:
                folder.mkdir(parents=True)
                self._write(rec)
            except OSError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise storage_error(exc, f"recording folder {folder}") from exc
            recorder = Recorder(rec, folder, self._ended, save=self._save, over_budget=self._over_budget)
            self._active[rec.id] = recorder
            self._finished_bytes = None
        recorder.start()
        return recorder

    def _ended(self, recorder: Recorder) -> None:
        with self._lock:
            self._active.pop(recorder.rec.id, None)
            self._finished_bytes = None
            if (self.dir / recorder.rec.id).is_dir():
                self._save(recorder.rec)

    def _over_budget(self) -> bool:
        with self._lock:
            if self._finished_bytes is None:
                self._finished_bytes = sum(folder_bytes(p) for p in self._folders() if p.name not in self._active)
            total = self._finished_bytes + sum(r.bytes_written for r in self._active.values())
        return total >= self.max_bytes

    # -- recording.json ------------------------------------------------------------------------
    def _write(self, rec: Recording) -> None:
        write_atomic(self.dir / rec.id / "recording.json", json.dumps(asdict(rec)))

    def _save(self, rec: Recording) -> None:
        """Persist ``rec``; when the disk refuses, remember it and retry on the next read (never raises)."""
        with self._lock:
            try:
                self._write(rec)
            except OSError as exc:
                if rec.id not in self._unsaved:
                    log.warning("recording %s: cannot write recording.json (%s); will retry", rec.id, exc)
                self._unsaved[rec.id] = rec
            else:
                self._unsaved.pop(rec.id, None)

    def _retry_saves(self) -> None:
        with self._lock:
            for rec in list(self._unsaved.values()):
                if rec.id in self._active:
                    continue  # its recorder saves it when it ends
                if (self.dir / rec.id).is_dir():
                    self._save(rec)
                else:
                    self._unsaved.pop(rec.id, None)

    # -- reading -------------------------------------------------------------------------------
    def get(self, rec_id: str) -> Recording:
        if not _ID.fullmatch(rec_id):
            raise UnknownRecording(f"no recording with id {rec_id!r}")
        self._retry_saves()
        return self._load(rec_id)

    def _load(self, rec_id: str) -> Recording:
        """The live record of an active or unsaved recording, else ``recording.json``."""
        with self._lock:
            if rec_id in self._active:
                return self._active[rec_id].rec
            if rec_id in self._unsaved:
                return self._unsaved[rec_id]
        path = self.dir / rec_id / "recording.json"
        try:
            return Recording.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UnknownRecording(f"no recording with id {rec_id!r}") from None
        except (OSError, ValueError, TypeError) as exc:
            raise UnknownRecording(f"recording {rec_id!r} cannot be read ({type(exc).__name__}: {exc}); "
                                   "it can only be deleted") from None

    def list(self, camera: str | None = None) -> list[dict]:
        self._retry_saves()
        recs = []
        for folder in self._folders():
            try:
                recs.append(self._load(folder.name))
            except UnknownRecording as exc:
                if (folder / "recording.json").exists():  # else: being created or deleted right now
                    log.warning("%s", exc)
        return [r.to_dict(self.dir / r.id) for r in sorted(recs, key=lambda r: r.started)
                if camera is None or r.camera == camera]

    def describe(self, rec_id: str) -> dict:
        return self.get(rec_id).to_dict(self.dir / rec_id)

    def segment(self, rec_id: str, index: int) -> Path:
        rec = self.get(rec_id)
        if not 0 <= index < len(rec.segments):
            raise UnknownRecording(f"recording {rec_id} has no segment {index} ({len(rec.segments)} segments)")
        if rec.state == RECORDING and index == len(rec.segments) - 1:
            raise RecordingBusy(f"segment {index} of recording {rec_id} is still being written")
        return self.dir / rec_id / rec.segments[index]

    def footage(self, rec_id: str) -> tuple[list[Path], int, float]:
        """(segment files, frames, fps) of a finished recording, for a fit."""
        rec = self.get(rec_id)
        if rec.state != DONE:
            raise RecordingBusy(f"recording {rec_id} is {rec.state}; only finished recordings can be fitted on")
        return [self.dir / rec_id / s for s in rec.segments], rec.frames, rec.fps

    def _folders(self) -> list[Path]:
        try:
            return sorted(p for p in self.dir.iterdir() if p.is_dir() and _ID.fullmatch(p.name))
        except FileNotFoundError:
            return []

    # -- deleting and stopping -----------------------------------------------------------------
    def delete(self, rec_id: str) -> None:
        """Delete a recording, stopping it first if it is being written."""
        if not _ID.fullmatch(rec_id):
            raise UnknownRecording(f"no recording with id {rec_id!r}")
        folder = self.dir / rec_id
        with self._lock:
            recorder = self._active.get(rec_id)
        if recorder is not None:
            recorder.stop()
            recorder.join(10)
            if recorder.is_alive():
                raise RecordingBusy(f"recording {rec_id} is still closing its segment; try again")
        with self._lock:
            known = self._unsaved.pop(rec_id, None) is not None
            if not folder.is_dir():
                if known:
                    return
                raise UnknownRecording(f"no recording with id {rec_id!r}")
            try:
                shutil.rmtree(folder)
            except OSError as exc:
                raise storage_error(exc, f"(delete) recording {rec_id}") from exc
            finally:
                self._finished_bytes = None

    def stop_all(self, timeout: float = 10.0) -> None:
        """At shutdown: end every recording with what it has, then retry any status not yet saved."""
        with self._lock:
            recorders = list(self._active.values())
        for r in recorders:
            r.stop()
        for r in recorders:
            r.join(timeout)
        self._retry_saves()

    # -- start-up repair -----------------------------------------------------------------------
    def _cleanup_interrupted(self) -> None:
        """Recordings that were being written when the service stopped (or whose end could not be saved):
        every segment is checked by decoding it; the playable ones are kept, the frame count and rate are
        taken from them, and the recording ends done (failed when nothing plays). A folder without
        ``recording.json`` was never a recording anyone saw and is removed."""
        for folder in self._folders():
            meta = folder / "recording.json"
            if not meta.is_file():
                log.warning("removing %s: a recording folder without recording.json", folder)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                rec = Recording.from_dict(json.loads(meta.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("cannot read %s (%s); leaving it for the operator to delete", meta, exc)
                continue
            if rec.state == RECORDING:
                self._repair(rec, folder)

    def _repair(self, rec: Recording, folder: Path) -> None:
        on_disk = {p.name for p in folder.glob("[0-9][0-9][0-9].mp4")}
        names = sorted(set(rec.segments) | on_disk)
        kept, frames, gaps, span = [], 0, 0, 0.0
        for name in names:
            playable = probe(folder / name)
            if playable.frames:
                kept.append(name)
                frames, gaps, span = frames + playable.frames, gaps + playable.frames - 1, span + playable.span_s
            else:
                (folder / name).unlink(missing_ok=True)
        rec.segments, rec.frames = kept, frames
        if gaps and span > 0:
            rec.fps = round(gaps / span, 3)
        summary = f"interrupted by a restart; {len(kept)} of {len(names)} segments play ({frames} frames)"
        if frames:
            rec.state, rec.note = DONE, summary
        else:
            rec.state, rec.error = FAILED, summary
        log.info("recording %s: %s", rec.id, summary)
        self._save(rec)

