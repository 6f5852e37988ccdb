"""A camera's events as the operator sees them: the store's record, the evidence (clip and snapshot) and
the notifications, driven only by the published results (each carries a copy of its event), never by the
stream's tracker, which the model thread is already moving on. The three parts are called each in its own
error boundary, so a full evidence disk does not keep a webhook from going out, and vice versa."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from runtime.types import AnomalyEvent

from ..event_store import EventStore
from ..evidence import EventEvidence
from ..heatmap import HeatScale
from ..notify import Notifier
from .sinks import Boundary, Published


class EventSink:
    name = "events"

    def __init__(self, camera: str, store: EventStore, evidence: EventEvidence | None, notifier: Notifier | None,
                 boundary: Boundary, heat_scale: Callable[[], HeatScale]) -> None:
        self.camera, self.store, self.evidence, self.notifier = camera, store, evidence, notifier
        self.boundary, self._heat_scale = boundary, heat_scale
        self.open_id: int | None = None          # the stored id of the open event
        self._record: AnomalyEvent | None = None  # its latest copy
        self._last: Published | None = None

    def publish(self, p: Published) -> None:
        r = p.result
        self._last = p
        if r.event == "start" and r.event_record is not None:
            self._start(p, r.event_record)
        if self.open_id is not None and r.event_record is not None:
            self._record = r.event_record
            if r.score is not None and self.evidence is not None:
                self.boundary.call("evidence_peak", self.evidence.on_frame_scored, r.score, p.frame.pixels, r.heatmap)
        if r.event == "end" and self.open_id is not None and r.event_record is not None:
            self._end(r.event_record)

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
