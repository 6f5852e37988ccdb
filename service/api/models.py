"""Models: list the bundled and registered ones, register an exported model, delete one no camera uses."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from ..fit_jobs import FitRequest
from ..uploads import receive_upload
from ..wiring import Services
from .deps import ADMIN, ready

router = APIRouter(prefix="/v1/models", dependencies=[ADMIN])


@router.get("", summary="bundled and registered models")
async def list_models(svc: Services = Depends(ready)) -> list[dict]:
    return await run_in_threadpool(svc.models.describe_all)


@router.post("", status_code=201, summary="register an exported model (multipart field 'file', e.g. from amvad "
             "fit); a registered name gets a new version, current at once")
async def add_model(request: Request, name: str | None = Query(None, description="default: the file's name"),
                    svc: Services = Depends(ready)) -> dict:
    """The answer names the ``version`` and the ``cameras`` that moved to it (those on the bare name)."""
    path, filename = await receive_upload(request, svc.settings.paths.uploads,
                                          svc.settings.limits.max_model_mb)
    try:
        stem = filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return await run_in_threadpool(svc.models.add, name or stem, path)
    finally:
        path.unlink(missing_ok=True)  # moved into the registry when it was accepted


@router.post("/fit", status_code=202, summary="fit a model on recordings or media files in a separate process")
async def start_fit(req: FitRequest, svc: Services = Depends(ready)) -> dict:
    return (await run_in_threadpool(svc.fits.submit, req)).status()


@router.get("/fit", summary="fit jobs of this run of the service")
def list_fits(svc: Services = Depends(ready)) -> list[dict]:
    return [j.status() for j in svc.fits.jobs.values()]


@router.get("/fit/{job_id}", summary="a fit job's state and progress")
def get_fit(job_id: str, svc: Services = Depends(ready)) -> dict:
    return svc.fits.get(job_id).status()


@router.delete("/fit/{job_id}", summary="cancel a running fit")
async def cancel_fit(job_id: str, svc: Services = Depends(ready)) -> dict:
    return (await run_in_threadpool(svc.fits.cancel, job_id)).status()


@router.get("/{name}", summary="one model; a registered name with its versions (name@N: one version)")
async def get_model(name: str, svc: Services = Depends(ready)) -> dict:
    return await run_in_threadpool(svc.models.describe_name, name)


@router.get("/{name}/card.md", summary="the model card of a version the service fitted (name: the current one)",
            response_class=PlainTextResponse)
def model_card(name: str, svc: Services = Depends(ready)) -> PlainTextResponse:
    return PlainTextResponse(svc.models.card(name), media_type="text/markdown; charset=utf-8")


@router.post("/{name}/rollback", summary="make an older version current again; cameras on the name follow")
async def rollback_model(name: str, version: int | None = Query(None, ge=1, description="default: the version "
                         "before the current one; a newer one rolls forward"), svc: Services = Depends(ready)) -> dict:
    return await run_in_threadpool(svc.models.rollback, name, version)


@router.delete("/{name}", summary="delete a registered model, every version (name@N: one version); 409 while a "
               "camera uses it")
async def delete_model(name: str, svc: Services = Depends(ready)) -> dict:
    files = await run_in_threadpool(svc.cameras.remove_model, name)
    return {"deleted": name, "files": files}
