"""Uploaded clips: ``POST /v1/clips`` and the job's status, score curve and heatmaps."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..clips import ClipTooLarge, plot_png, probe_clip, save_upload
from ..errors import error
from ..wiring import Services
from .deps import ready, require_key

router = APIRouter(prefix="/v1/clips", dependencies=[Depends(require_key)])
UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


@router.post("", status_code=202, openapi_extra=UPLOAD_DOC, summary="score an uploaded video (multipart field 'file')")
async def upload_clip(request: Request, wait: bool = False, heatmaps: bool = False,
                      svc: Services = Depends(ready)):
    limits = svc.settings.limits
    limit = int(limits.max_upload_mb * 2 ** 20)
    if int(request.headers.get("content-length") or 0) > limit + 2 ** 16:
        raise ClipTooLarge(f"upload is larger than the limit of {limits.max_upload_mb:g} MB")
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "multipart form field 'file' with the video is required")
    path = await run_in_threadpool(save_upload, upload.file, limit, limits.max_upload_mb)
    try:
        probe = await run_in_threadpool(probe_clip, path, svc.settings)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    job = svc.clips.submit(path, upload.filename or "upload", probe, heatmaps)
    if not wait:
        return job.status_dict()
    await asyncio.wrap_future(job.future)
    if job.status == "failed":
        return error(422, f"scoring failed: {job.error}", id=job.id)
    return JSONResponse(job.status_dict(), status_code=200)


@router.get("/{job_id}", summary="clip job status and result")
def clip_status(job_id: str, svc: Services = Depends(ready)) -> dict:
    return svc.clips.get(job_id).status_dict()


@router.get("/{job_id}/plot.png", summary="score curve as PNG")
async def clip_plot(job_id: str, svc: Services = Depends(ready)) -> Response:
    job = svc.clips.get(job_id)
    if job.result is None:
        raise HTTPException(409, f"clip job {job_id} is {job.status}; no result yet")
    png = await run_in_threadpool(plot_png, job.result, job.filename)
    return Response(png, media_type="image/png")


@router.get("/{job_id}/frames/{frame_id}/heatmap.jpg", summary="heatmap overlay of one frame (upload with ?heatmaps=true)")
def clip_heatmap(job_id: str, frame_id: int, svc: Services = Depends(ready)) -> Response:
    job = svc.clips.get(job_id)
    if frame_id not in job.heatmap_jpegs:
        raise HTTPException(404, f"no heatmap for frame {frame_id} of job {job_id} "
                                 f"(upload with ?heatmaps=true; warm-up frames have none)")
    return Response(job.heatmap_jpegs[frame_id], media_type="image/jpeg")
