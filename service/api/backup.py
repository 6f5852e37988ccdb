"""``GET /v1/backup``: the state directory as a tar.gz archive (service/backup.py), made while the service
runs and streamed as it is made, so it is never held whole in memory or on disk."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from amvad.runtime.errors import Busy

from ..backup import CHUNK, Snapshot, settings_as_config
from ..wiring import Services
from .deps import ADMIN, ready

log = logging.getLogger("amvad.service")
router = APIRouter(prefix="/v1/backup", dependencies=[ADMIN])
FLUSH_TIMEOUT_S = 5.0
_one_at_a_time = threading.Lock()


class BackupBusy(Busy):
    """A backup is being made already; one at a time (HTTP 429)."""


class Cancelled(Exception):
    """The client went away: the archive's writer stops."""


class ChunkPipe:
    """A write-only file for ``tarfile`` whose 1 MiB chunks the response takes from a short queue: the
    archive is made as fast as the client reads it. ``get`` returns None at the end (or once cancelled)
    and raises the writer's error."""

    def __init__(self, depth: int = 4) -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._buf = bytearray()
        self.cancelled = threading.Event()

    def write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= CHUNK:
            self._put(bytes(self._buf))
            self._buf.clear()
        return len(data)

    def flush(self) -> None:
        """tarfile and gzip call this; chunks go out as they fill, and the rest at close."""

    def _put(self, item) -> None:
        while True:
            if self.cancelled.is_set():
                raise Cancelled
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self, error: BaseException | None = None) -> None:
        if error is None and self._buf:
            self._put(bytes(self._buf))
        self._put(error)

    def get(self) -> bytes | None:
        while not self.cancelled.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            return item
        return None


@router.get("", summary="download a backup of the state directory (tar.gz; see amvad restore)",
            response_class=StreamingResponse, responses={200: {"content": {"application/gzip": {}}}})
async def get_backup(evidence: bool = Query(True, description="include event clips and snapshots"),
                     svc: Services = Depends(ready)) -> StreamingResponse:
    """Cameras and webhooks added through the API, registered models, running statistics, events (an
    SQLite online backup) and, unless ``evidence=false``, their evidence; ``manifest.json`` comes last.
    The archive holds camera credentials and webhook secrets: keep it as safe as the API key."""
    if not _one_at_a_time.acquire(blocking=False):
        raise BackupBusy("a backup is being made already; try again when it is done")
    try:
        snap = await run_in_threadpool(_snapshot, svc, evidence)
    except BaseException:
        _one_at_a_time.release()
        raise
    name = f"amvad-backup-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.tar.gz"
    return StreamingResponse(_stream(snap), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _snapshot(svc: Services, evidence: bool) -> Snapshot:
    """Queued event writes go into the file first, so the snapshot has every event this process knows."""
    if not svc.events.flush(FLUSH_TIMEOUT_S):
        log.warning("backup: %d event write(s) still queued (%s); the backup is without them",
                    svc.events.pending, svc.events.last_error)
    return Snapshot(svc.settings.paths, evidence=evidence, config=settings_as_config(svc.settings))


async def _stream(snap: Snapshot) -> AsyncIterator[bytes]:
    pipe = ChunkPipe()

    def write() -> None:
        try:
            manifest = snap.write(pipe)
            pipe.close()
            log.info("backup: %d file(s), %d bytes sent", len(manifest["members"]),
                     sum(m["bytes"] for m in manifest["members"].values()))
        except Cancelled:
            log.warning("backup: the client went away; archive not finished")
        except BaseException as exc:
            log.error("backup failed while streaming: %s", exc)
            with contextlib.suppress(Cancelled):  # the client left too: nobody to tell
                pipe.close(exc)

    writer = threading.Thread(target=write, name="backup", daemon=True)
    writer.start()
    try:
        while (chunk := await run_in_threadpool(pipe.get)) is not None:
            yield chunk
    finally:
        pipe.cancelled.set()
        await run_in_threadpool(writer.join)
        snap.close()
        _one_at_a_time.release()
