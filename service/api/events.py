"""Anomaly and camera events (tamper, scene change) from the event store: across cameras (filtered, paged),
per camera, one event's clip, snapshot and score curve, and the operator's feedback on it. What the review
page reads: every route here but feedback is read-only."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict

from ..cameras import UnknownCamera
from ..event_store import parse_time
from ..wiring import Services
from .deps import VIEWER, ready

router = APIRouter(dependencies=[VIEWER])


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Literal["normal", "anomaly"]


def time_param(value: str | None, name: str) -> float | None:
    try:
        return parse_time(value, name)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/v1/events", summary="events of every camera, newest first; X-Total-Count: how many match")
def list_events(response: Response, camera: str | None = None,
                since: str | None = Query(None, description="ISO-8601; events that start at or after it"),
                until: str | None = Query(None, description="ISO-8601; events that start at or before it"),
                limit: int = Query(100, ge=1, le=10000), offset: int = Query(0, ge=0, le=10**9),
                feedback: Literal["normal", "anomaly", "none"] | None = Query(
                    None, description="normal = false alarm, anomaly = real, none = no feedback yet"),
                kind: Literal["ongoing", "ended", "cut"] | None = Query(
                    None, alias="type", description="ongoing; ended by the scores; cut short by the service "
                                                    "(disarmed, stopped, model changed; `note` says why)"),
                event_kind: Literal["anomaly", "tamper", "scene_change"] | None = Query(
                    None, alias="kind", description="anomaly (in the scene); tamper or scene_change (the camera "
                                                    "itself changed: never an anomaly)"),
                svc: Services = Depends(ready)) -> list[dict]:
    t0, t1 = time_param(since, "since"), time_param(until, "until")
    if t0 is not None and t1 is not None and t1 < t0:
        raise HTTPException(422, f"until: {until} is before since ({since})")
    # times are shown to the millisecond: ``until`` set to an event's shown start includes that event
    filters = {"camera": camera, "since": t0, "until": None if t1 is None else t1 + 0.001, "feedback": feedback,
               "kind": kind, "event_kind": event_kind}
    response.headers["X-Total-Count"] = str(svc.events.count(**filters))
    return svc.events.query(**filters, limit=limit, offset=offset)


@router.get("/v1/events/cameras", summary="every camera that has events (deleted ones too): count, newest")
def event_cameras(svc: Services = Depends(ready)) -> list[dict]:
    return svc.events.cameras()


@router.get("/v1/cameras/{camera_id}/events", summary="a camera's events, newest first (kept across restarts)")
def camera_events(camera_id: str, limit: int = Query(100, ge=1, le=10000),
                  svc: Services = Depends(ready)) -> list[dict]:
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
    """An anomaly's peak frame with its heatmap; a camera event's frame as it began (no heatmap)."""
    return FileResponse(evidence_file(svc, camera_id, event_id, "snapshot"), media_type="image/jpeg")


@router.get("/v1/cameras/{camera_id}/events/{event_id}/scores", summary="the score curve around one event")
def event_scores(camera_id: str, event_id: int, svc: Services = Depends(ready)) -> dict:
    """``points``: ``[seconds from the event's start, score or null]`` from the clip's pre-roll to the end
    (as kept when the event opened and closed; up to now while it is open). ``clip_offset_s``: where the
    clip's time 0 is on that axis (its first frame; the configured pre-roll when not recorded)."""
    curve = svc.events.scores(camera_id, event_id)
    clip_start = curve.pop("clip_start_ts")
    curve["clip_offset_s"] = (round(clip_start - curve["start_ts"], 3) if clip_start is not None
                              else -svc.settings.events.pre_roll_s)
    return curve


@router.post("/v1/cameras/{camera_id}/events/{event_id}/feedback", summary="say whether an event was a real anomaly")
def event_feedback(camera_id: str, event_id: int, body: Feedback, svc: Services = Depends(ready)) -> dict:
    """``normal`` marks a false alarm: its clip becomes footage a later fit of this camera can use
    (``POST /v1/models/fit`` with ``"feedback_of": "<camera>"``)."""
    return svc.events.set_feedback(camera_id, event_id, body.label)
