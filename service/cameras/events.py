"""A camera's events as the operator sees them: the store's record, the evidence (clip and snapshot) and
the notifications, driven only by the published results (each carries a copy of its event), never by the
stream's tracker, which the model thread is already moving on. The three parts are called each in its own
error boundary, so a full evidence disk does not keep a webhook from going out, and vice versa.

Arming gates only this: a disarmed camera's tracker goes on (scores, flags, running statistics), but
:class:`ArmGate` shows no event change while it is disarmed, and the sink closes the event that was open
when it was disarmed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from amvad.runtime.types import AnomalyEvent, FrameResult

from ..event_store import EventStore
from ..evidence import EventEvidence
from ..heatmap import HeatScale
from ..notify import Notifier
from .sinks import Boundary, Published


class ArmGate:
    """The event change of each published result as the operator sees it: none while disarmed; an anomaly
    still going on when the camera is armed again starts an event at the first armed scored frame (an
    intruder already in the scene is not missed); an end only of an event that was shown starting."""

    def __init__(self) -> None:
        self.raised = False    # a start was shown and its end not yet
        self.rearmed = False   # armed again; the next scored frame may resume an ongoing anomaly

    def event(self, armed: bool, r: FrameResult) -> str | None:
        if not armed:
            self.raised, self.rearmed = False, True
            return None
        kind = r.event
        if self.rearmed and r.score is not None:
            self.rearmed = False
            if kind is None and r.event_record is not None and r.event_record.end is None:
                kind = "start"
        if kind == "end" and not self.raised:
            return None
        if kind is not None:
            self.raised = kind == "start"
        return kind


class EventSink:
    name = "events"

    def __init__(self, camera: str, store: EventStore, evidence: EventEvidence | None, notifier: Notifier | None,
                 boundary: Boundary, heat_scale: Callable[[], HeatScale]) -> None:
        self.camera, self.store, self.evidence, self.notifier = camera, store, evidence, notifier
        self.boundary, self._heat_scale = boundary, heat_scale
        self.open_id: int | None = None          # the stored id of the open event
        self._record: AnomalyEvent | None = None  # its latest copy
        self._last: Published | None = None
        self._resumed = False  # the open event started when the camera was armed again, not at its tracker's start

    def publish(self, p: Published) -> None:
        r = p.result
        if not p.armed:  # ends at the last armed frame
            self.close_open(note="the camera was disarmed")
            return
        self._last = p
        if p.event == "start" and r.event_record is not None:
            self._start(p, self._resume(p, r.event_record) if r.event != "start" else r.event_record)
            self._resumed = r.event != "start"
        if self.open_id is not None and r.event_record is not None:
            self._record = self._follow(p, r.event_record)
            if r.score is not None and self.evidence is not None:
                self.boundary.call("evidence_peak", self.evidence.on_frame_scored, r.score, p.frame.pixels, r.heatmap)
        if p.event == "end" and self.open_id is not None and r.event_record is not None:
            self._end(self._record)

    @staticmethod
    def _resume(p: Published, record: AnomalyEvent) -> AnomalyEvent:
        """The tracker's ongoing event as if it started at this (the first armed) frame."""
        f, score = p.frame, p.result.score
        return dataclasses.replace(record, start=f.timestamp, start_frame=f.frame_id, peak_score=score,
                                   peak_frame=f.frame_id)

    def _follow(self, p: Published, record: AnomalyEvent) -> AnomalyEvent:
        """The tracker's latest copy; for a resumed event, its start and a peak over armed frames only."""
        if not self._resumed or self._record is None:
            return record
        peak_score, peak_frame = self._record.peak_score, self._record.peak_frame
        if p.result.score is not None and p.result.score > peak_score:
            peak_score, peak_frame = p.result.score, p.frame.frame_id
        return dataclasses.replace(record, start=self._record.start, start_frame=self._record.start_frame,
                                   peak_score=peak_score, peak_frame=peak_frame)

    def _start(self, p: Published, record: AnomalyEvent) -> None:
        if self.open_id is not None:  # a start without the end of the last one (a model switch): close it
            self.close_open()
        row = self.store.open(camera=self.camera, model=p.model, threshold=p.threshold, event=record)
        self.open_id, self._record = row["id"], record
        if self.evidence is not None:
            self.boundary.call("evidence", self.evidence.on_start, row["id"], record.start)
        self._notify("start", row)

    def _end(self, record: AnomalyEvent, note: str | None = None) -> None:
        event_id, self.open_id, self._record = self.open_id, None, None
        row = self.store.close(event_id, record, note=note)
        if self.evidence is not None:
            self.boundary.call("evidence", self.evidence.on_end, event_id, record.end, self._heat_scale())
        if row is not None:
            self._notify("end", row)

    def _notify(self, kind: str, row: dict) -> None:
        if self.notifier is not None:
            self.boundary.call("notify", self.notifier.event, self.camera, kind, row)

    def close_open(self, note: str | None = None) -> None:
        """End the open event at the last published frame (the camera stops or changes model)."""
        if self.open_id is None or self._record is None or self._last is None:
            return
        last = self._last.frame
        record = dataclasses.replace(self._record, end=last.timestamp, end_frame=last.frame_id)
        self._end(record, note)
