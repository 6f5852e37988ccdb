"""Uploaded clips: ``POST /v1/clips`` and the job's status, score curve and heatmaps."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..clips import plot_png
from ..errors import error
from ..uploads import receive_upload
from ..wiring import Services
from .deps import ADMIN, ready

router = APIRouter(prefix="/v1/clips", dependencies=[ADMIN])
UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


@router.post("", status_code=202, openapi_extra=UPLOAD_DOC, summary="score an uploaded video (multipart field 'file')")
async def upload_clip(request: Request, wait: bool = False, heatmaps: bool = False,
                      model: str | None = Query(None, max_length=72, description="score on this model: bundled, "
                                                "registered (its current version) or name@N; default the service's"),
                      svc: Services = Depends(ready)):
    svc.clips.check_capacity()  # before taking the body
    scorer = await run_in_threadpool(svc.clips.model, model)  # an unknown model is refused before the body too
    path, filename = await receive_upload(request, svc.clips.upload_dir, svc.settings.limits.max_upload_mb)
    try:
        probe = await run_in_threadpool(svc.clips.probe, path, filename, scorer)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    job = svc.clips.submit(path, filename, probe, heatmaps, scorer)
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
