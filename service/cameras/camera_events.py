"""A camera's tamper and scene-change events as the operator sees them (runtime/camera_watch.py raises
them): stored beside the anomaly events (``kind`` tamper / scene_change), a snapshot of the frame and a
clip with pre-roll (who walked up to the camera), their own notification types, and a counter. Driven
only by the published results, each carrying a copy of its camera event, as ``events.EventSink`` is.

Arming: a tamper is reported whether the camera is armed or not (``events.camera_watch.tamper_when_disarmed``,
default true: like an alarm panel's tamper zone, a covered camera is worth knowing about in every mode); a
scene change only while armed (it says someone switched the light on, which a camera disarmed for privacy
must not tell). A camera event going on when it becomes shown (armed again) starts at that frame."""

from __future__ import annotations

import dataclasses

from amvad.runtime.camera_watch import TAMPER
from amvad.runtime.types import CameraEvent

from ..event_store import EventStore
from ..evidence import EventEvidence
from ..metrics import Metrics
from ..notify import Notifier
from .sinks import Boundary, Published


def shown(armed: bool, record: CameraEvent | None, tamper_when_disarmed: bool) -> bool:
    """Whether the operator sees this camera event now."""
    return record is not None and (armed or (record.type == TAMPER and tamper_when_disarmed))


class CameraEventSink:
    name = "camera_events"

    def __init__(self, camera: str, store: EventStore, evidence: EventEvidence | None, notifier: Notifier | None,
                 metrics: Metrics, boundary: Boundary, tamper_when_disarmed: bool = True) -> None:
        self.camera, self.store, self.evidence, self.notifier = camera, store, evidence, notifier
        self.metrics, self.boundary = metrics, boundary
        self.tamper_when_disarmed = tamper_when_disarmed
        self.open_id: int | None = None
        self.record: CameraEvent | None = None  # the open one as stored (its start may be a re-arm's)
        self._last: Published | None = None

    def publish(self, p: Published) -> None:
        r = p.result
        rec = r.camera_event_record
        see = shown(p.armed, rec, self.tamper_when_disarmed)
        if self.open_id is not None and (not see or rec.id != self.record.id):
            # hidden by disarming; or its end was on a frame that never got here (a failed batch)
            self.close_open(note="the camera was disarmed" if rec is not None and not see else None)
        self._last = p
        if self.open_id is None and see and (r.camera_event == "start" or (rec.end is None and r.camera_event is None)):
            start = rec if r.camera_event == "start" else dataclasses.replace(  # going on when it became shown
                rec, start=p.frame.timestamp, start_frame=p.frame.frame_id)
            self._start(p, start)
        if r.camera_event == "end" and self.open_id is not None and rec is not None and rec.id == self.record.id:
            self._end(dataclasses.replace(self.record, end=rec.end, end_frame=rec.end_frame))

    def _start(self, p: Published, record: CameraEvent) -> None:
        row = self.store.open_camera_event(camera=self.camera, model=p.model, threshold=p.threshold, event=record)
        self.open_id, self.record = row["id"], record
        self.metrics.camera_event(self.camera, record.type, record.reason)
        if record.type == TAMPER:
            self.metrics.tampered.labels(self.camera).set(1)
        if self.evidence is not None:
            self.boundary.call("evidence", self.evidence.on_start, row["id"], record.start)
            self.boundary.call("evidence", self.evidence.snapshot, row["id"], p.frame.pixels)
        self._notify("start", row)

    def _end(self, record: CameraEvent, note: str | None = None) -> None:
        event_id, self.open_id, self.record = self.open_id, None, None
        if record.type == TAMPER:
            self.metrics.tampered.labels(self.camera).set(0)
        row = self.store.close_camera_event(event_id, record, note=note)
        if self.evidence is not None:
            self.boundary.call("evidence", self.evidence.end_clip, event_id, record.end)
        if row is not None:
            self._notify("end", row)

    def _notify(self, change: str, row: dict) -> None:
        if self.notifier is not None:
            self.boundary.call("notify", self.notifier.camera_event, self.camera, change, row)

    def close_open(self, note: str | None = None) -> None:
        """End the open camera event at the last published frame (disarmed, stopped, another model)."""
        if self.open_id is None or self.record is None or self._last is None:
            return
        last = self._last.frame
        self._end(dataclasses.replace(self.record, end=last.timestamp, end_frame=last.frame_id), note)

    def status(self) -> dict | None:
        """The open camera event as stored (the camera's status shows it), or None. Read once: the publish
        thread may end it meanwhile."""
        event_id, record = self.open_id, self.record
        if record is None:
            return None
        return {"id": event_id, "kind": record.type, "reason": record.reason, "start_ts": record.start}
