"""Anomaly events from the event store: across cameras, per camera, one event's clip and snapshot, and
the operator's feedback on it."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from ..cameras import UnknownCamera
from ..event_store import parse_time
from ..wiring import Services
from .deps import ready, require_key

router = APIRouter(dependencies=[Depends(require_key)])


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Literal["normal", "anomaly"]


def time_param(value: str | None, name: str) -> float | None:
    try:
        return parse_time(value, name)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/v1/events", summary="events of every camera, newest first")
def list_events(camera: str | None = None, since: str | None = Query(None, description="ISO-8601"),
                until: str | None = Query(None, description="ISO-8601"), limit: int = Query(100, ge=1, le=10000),
                feedback: Literal["normal", "anomaly"] | None = None, svc: Services = Depends(ready)) -> list[dict]:
    return svc.events.query(camera=camera, since=time_param(since, "since"), until=time_param(until, "until"),
                            limit=limit, feedback=feedback)


@router.get("/v1/cameras/{camera_id}/events", summary="a camera's events, newest first (kept across restarts)")
def camera_events(camera_id: str, limit: int = Query(100, ge=1, le=10000), svc: Services = Depends(ready)) -> list[dict]:
    events = svc.events.query(camera=camera_id, limit=limit)
    if not events:
        svc.cameras.get(camera_id)  # 404 for a camera that neither runs nor ever had an event
    return events


@router.get("/v1/cameras/{camera_id}/events/{event_id}", summary="one event")
def get_event(camera_id: str, event_id: int, svc: Services = Depends(ready)) -> dict:
    return svc.events.get(camera_id, event_id)


def evidence_file(svc: Services, camera_id: str, event_id: int, kind: str):
    event = svc.events.get(camera_id, event_id)
    try:
        evidence = svc.cameras.get(camera_id).evidence
    except UnknownCamera:
        evidence = None
    if evidence is not None and kind == "clip" and evidence.writing(event_id):
        raise HTTPException(409, f"the clip of event {event_id} is still being written (post-roll)")
    name = event["clip" if kind == "clip" else "snapshot"]
    path = svc.settings.paths.evidence(camera_id) / name if name else None
    if path is None or not path.is_file():
        raise HTTPException(404, f"event {event_id} of camera {camera_id} has no {kind} (evidence off, not "
                                 f"written, or removed by retention)")
    return path


@router.get("/v1/cameras/{camera_id}/events/{event_id}/clip.mp4", summary="H.264 clip: pre-roll, event, post-roll")
def event_clip(camera_id: str, event_id: int, svc: Services = Depends(ready)) -> FileResponse:
    return FileResponse(evidence_file(svc, camera_id, event_id, "clip"), media_type="video/mp4")


@router.get("/v1/cameras/{camera_id}/events/{event_id}/snapshot.jpg", summary="the peak frame with its heatmap")
def event_snapshot(camera_id: str, event_id: int, svc: Services = Depends(ready)) -> FileResponse:
    return FileResponse(evidence_file(svc, camera_id, event_id, "snapshot"), media_type="image/jpeg")


@router.post("/v1/cameras/{camera_id}/events/{event_id}/feedback", summary="say whether an event was a real anomaly")
def event_feedback(camera_id: str, event_id: int, body: Feedback, svc: Services = Depends(ready)) -> dict:
    """``normal`` marks a false alarm: its clip becomes footage a later fit of this camera can use
    (``POST /v1/models/fit`` with ``"feedback_of": "<camera>"``)."""
    return svc.events.set_feedback(camera_id, event_id, body.label)
