"""Recordings of cameras (the footage fits learn from): list, describe, download segments, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ..wiring import Services
from .deps import ADMIN, ready

router = APIRouter(prefix="/v1/recordings", dependencies=[ADMIN])


@router.get("", summary="all recordings")
def list_recordings(camera: str | None = None, svc: Services = Depends(ready)) -> list[dict]:
    return svc.recordings.list(camera)


@router.get("/{rec_id}", summary="one recording")
def get_recording(rec_id: str, svc: Services = Depends(ready)) -> dict:
    return svc.recordings.describe(rec_id)


@router.get("/{rec_id}/segments/{index}.mp4", summary="download one H.264 segment")
def get_segment(rec_id: str, index: int, svc: Services = Depends(ready)) -> FileResponse:
    return FileResponse(svc.recordings.segment(rec_id, index), media_type="video/mp4",
                        filename=f"{rec_id}-{index:03d}.mp4")


@router.delete("/{rec_id}", summary="delete a recording (stops it first when it is still recording)")
async def delete_recording(rec_id: str, svc: Services = Depends(ready)) -> dict:
    await run_in_threadpool(svc.recordings.delete, rec_id)
    return {"deleted": rec_id}
