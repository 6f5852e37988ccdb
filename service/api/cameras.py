"""Live cameras: add, list, inspect and remove them; their events, recent scores, latest heatmap, and
the per-frame WebSocket."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends, HTTPException, Query, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from amvad.runtime.errors import AmvadError

from ..auth import Principal
from ..config import CameraConfig, CameraPatch
from ..wiring import Services
from .deps import ADMIN, VIEWER, WS_PROTOCOL, ready, websocket_role

log = logging.getLogger("amvad.service")
router = APIRouter(prefix="/v1/cameras", dependencies=[VIEWER])  # reading; each change also needs ADMIN
# The WebSocket checks its role itself: it reports a refusal as a message before closing.
websocket_router = APIRouter(prefix="/v1/cameras")


@router.post("", status_code=201, summary="add a camera", dependencies=[ADMIN])
async def add_camera(cfg: CameraConfig, svc: Services = Depends(ready)) -> dict:
    """The camera is kept in the state directory and restarted with the service until deleted."""
    return (await run_in_threadpool(svc.cameras.add, cfg, True)).status()


@router.get("", summary="all cameras and their states")
def list_cameras(svc: Services = Depends(ready)) -> list[dict]:
    return [c.status() for c in svc.cameras.list()]


@router.get("/{camera_id}", summary="one camera's state")
def get_camera(camera_id: str, svc: Services = Depends(ready)) -> dict:
    return svc.cameras.get(camera_id).status()


@router.patch("/{camera_id}", summary="change a camera's model, threshold, replay rate, arming, schedules or "
              "night profile", dependencies=[ADMIN])
async def patch_camera(camera_id: str, patch: CameraPatch, svc: Services = Depends(ready)) -> dict:
    """Only this camera changes; with a new model its next frames warm up and are scored by it, starting
    from the model's own training statistics. ``armed``, ``schedules`` and ``night`` apply at once; the answer
    says what is in force and why (``armed_by``, ``armed_why``, ``profile``, ``windows``, ``night``)."""
    return (await run_in_threadpool(svc.cameras.update, camera_id, patch)).status()


class RecordRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(gt=0, le=3600, description="how long to record")


class CalibrateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(60.0, ge=5, le=600, description="how much live footage, vouched normal, to score")
    false_alarms_per_hour: float = Field(1.0, gt=0, description="the rate the threshold is set for")
    allow_below_training: bool = Field(False, description="let the threshold go below the model's training "
                                       "quantile (only with enough footage to trust the rate)")


@router.post("/{camera_id}/recordings", status_code=201, summary="record the camera's frames (H.264) for a fit",
             dependencies=[ADMIN])
async def record_camera(camera_id: str, req: RecordRequest, svc: Services = Depends(ready)) -> dict:
    recorder = svc.cameras.get(camera_id).record(svc.recordings, req.seconds)
    return recorder.rec.to_dict()


@router.get("/{camera_id}/recordings", summary="the camera's recordings", dependencies=[ADMIN])
def camera_recordings(camera_id: str, svc: Services = Depends(ready)) -> list[dict]:
    svc.cameras.get(camera_id)
    return svc.recordings.list(camera_id)


@router.post("/{camera_id}/calibrate", status_code=202, dependencies=[ADMIN],
             summary="set the threshold from live footage the operator vouches is normal (a job)")
async def calibrate_camera(camera_id: str, req: CalibrateRequest, wait: bool = Query(
        False, description="answer when the job ends (200 with the result) instead of at once (202)"),
        svc: Services = Depends(ready)):
    """Starts a job that listens ``seconds`` to the camera's scores, then sets its threshold for the target
    false-alarm rate on that footage (stored like a PATCH), never below the model's training quantile
    unless ``allow_below_training``. Answers 202 with the job (poll ``GET .../calibration``: progress, then
    the result: threshold, footage used, false alarms per hour on it); 409 when the camera is not live or
    already calibrating."""
    job = await run_in_threadpool(svc.cameras.calibrations.start, camera_id, req.seconds,
                                  req.false_alarms_per_hour, req.allow_below_training)
    if not wait:
        return job.status()
    while not job.done.is_set():
        await asyncio.sleep(0.2)
    if job.error is not None:
        raise job.error
    return JSONResponse(job.status(), status_code=200)


@router.get("/{camera_id}/calibration", summary="the camera's latest calibration job: progress, result or error",
            dependencies=[ADMIN])
def latest_calibration(camera_id: str, svc: Services = Depends(ready)) -> dict:
    return svc.cameras.calibrations.latest(camera_id).status()


@router.get("/{camera_id}/calibrations", summary="the camera's calibration jobs, newest first",
            dependencies=[ADMIN])
def camera_calibrations(camera_id: str, svc: Services = Depends(ready)) -> list[dict]:
    return [j.status() for j in svc.cameras.calibrations.of(camera_id)]


@router.get("/{camera_id}/calibrations/{job_id}", summary="one calibration job", dependencies=[ADMIN])
def camera_calibration(camera_id: str, job_id: str, svc: Services = Depends(ready)) -> dict:
    return svc.cameras.calibrations.get(camera_id, job_id).status()


@router.delete("/{camera_id}/calibrations/{job_id}", summary="cancel a running calibration (the threshold stays)",
               dependencies=[ADMIN])
async def cancel_calibration(camera_id: str, job_id: str, svc: Services = Depends(ready)) -> dict:
    return (await run_in_threadpool(svc.cameras.calibrations.cancel, camera_id, job_id)).status()


@router.delete("/{camera_id}", summary="stop and remove a camera (also after a restart)", dependencies=[ADMIN])
async def delete_camera(camera_id: str, svc: Services = Depends(ready)) -> dict:
    await run_in_threadpool(svc.cameras.remove, camera_id)
    return {"deleted": camera_id}


@router.get("/{camera_id}/scores", summary="recent per-frame messages")
def camera_scores(camera_id: str, limit: int = Query(300, ge=1, le=600), svc: Services = Depends(ready)) -> list[dict]:
    return list(svc.cameras.get(camera_id).recent)[-limit:]


@router.get("/{camera_id}/heatmap.jpg", summary="latest heatmap overlay")
async def camera_heatmap(camera_id: str, svc: Services = Depends(ready)) -> Response:
    jpeg = await run_in_threadpool(svc.cameras.get(camera_id).heatmap_jpeg)
    if jpeg is None:
        raise HTTPException(404, f"camera {camera_id} has no scored frame yet")
    return Response(jpeg, media_type="image/jpeg")


@websocket_router.websocket("/{camera_id}/ws")
async def camera_ws(websocket: WebSocket, camera_id: str, heatmap: bool = False,
                    who: Principal | AmvadError = Depends(websocket_role("viewer"))) -> None:
    """One JSON message per frame; errors are sent as ``{"error": ..., "status": <HTTP status>}`` before
    closing with 1008 (401/403: credentials or role, 404: no such camera, 503: not ready)."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    await websocket.accept(subprotocol=WS_PROTOCOL if WS_PROTOCOL in offered else None)
    try:
        if isinstance(who, AmvadError):
            raise who
        cam = ready(websocket).cameras.get(camera_id)
    except (AmvadError, HTTPException) as exc:
        status, msg = (exc.status_code, exc.detail) if isinstance(exc, HTTPException) else (exc.status, exc.message)
        await websocket.send_json({"error": str(msg), "status": status})
        await websocket.close(code=1008)
        return
    client = cam.broadcaster.subscribe(heatmap)
    receiver = asyncio.create_task(_drain(websocket))
    try:
        while not receiver.done():
            getter = asyncio.create_task(client.queue.get())
            done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            await websocket.send_text(getter.result())
    except (WebSocketDisconnect, RuntimeError) as exc:  # the client went away mid-send: normal end
        log.debug("camera %s: WebSocket client left (%s)", camera_id, type(exc).__name__)
    finally:
        receiver.cancel()
        cam.broadcaster.unsubscribe(client)


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until it disconnects."""
    try:
        while True:
            if (await websocket.receive())["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return

