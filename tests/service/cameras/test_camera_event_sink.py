"""A camera's tamper and scene-change events as the operator sees them, on a real event store and real
evidence files, driven by published results as the camera's publish thread hands them over: stored with a
snapshot, counted, the tamper gauge up and down; a tamper reported while disarmed (the default) and a scene
change not; one going on when the camera is armed again starts there."""

from __future__ import annotations

import numpy as np

from amvad.runtime.types import CameraEvent, Frame, FrameResult
from amvad.service.cameras.camera_events import CameraEventSink
from amvad.service.cameras.sinks import Boundary, Published, message
from amvad.service.config import CameraEventsConfig
from amvad.service.event_store import EventStore
from amvad.service.evidence import EventEvidence
from amvad.service.metrics import Metrics

T0 = 1_764_064_800.0


class Camera:
    """The sink with its real store, evidence folder and metrics; ``frame`` publishes one result."""

    def __init__(self, tmp, tamper_when_disarmed: bool = True) -> None:
        self.store, self.metrics = EventStore(tmp / "events.sqlite3"), Metrics()
        cfg = CameraEventsConfig(clips=True, pre_roll_s=0.5, post_roll_s=0.5)
        self.evidence = EventEvidence("cam", tmp / "events" / "cam", self.store, cfg, lambda: None)
        self.boundary = Boundary("cam", self.metrics)
        self.sink = CameraEventSink("cam", self.store, self.evidence, None, self.metrics, self.boundary,
                                    tamper_when_disarmed)
        self.i = 0

    def frame(self, record: CameraEvent | None, change: str | None = None, armed: bool = True) -> None:
        self.i += 1
        frame = Frame("cam", self.i, 1, T0 + self.i / 10, np.full((24, 32, 3), 9, np.uint8))
        r = FrameResult(self.i, frame.timestamp, None, False, "live", None, None, None, held=record is not None,
                        camera_event=change, camera_event_record=record)
        self.sink.publish(Published("cam", "m", 2.0, frame, r, message("cam", "m", 2.0, "live", r), armed))

    def metric(self, text: str) -> bool:
        return text in self.metrics.render().decode()

    def stored(self, kind: str) -> list[dict]:
        assert self.store.flush(10)
        return self.store.query(event_kind=kind)

    def close(self) -> None:
        self.evidence.stop()
        self.store.close_db()


def tamper(end: float | None = None, end_frame: int | None = None) -> CameraEvent:
    return CameraEvent(1, "tamper", "covered", T0 + 0.1, 1, end, end_frame, {"contrast": 0.004})


def scene_change(end: float | None = None) -> CameraEvent:
    return CameraEvent(2, "scene_change", "lighting", T0 + 0.1, 1, end, None if end is None else 9, {})


def test_a_tamper_is_stored_with_a_snapshot_counted_and_its_gauge_follows_it(tmp_path):
    cam = Camera(tmp_path)
    try:
        cam.frame(tamper(), "start")
        [row] = cam.stored("tamper")
        assert row["reason"] == "covered" and row["end"] is None and row["snapshot"] == f"{row['id']}.jpg"
        assert (tmp_path / "events" / "cam" / row["snapshot"]).stat().st_size > 0
        assert cam.metric('vad_camera_tampered{camera="cam"} 1.0')
        assert cam.metric('vad_camera_events_total{camera="cam",reason="covered",type="tamper"} 1.0')
        assert cam.sink.status() == {"id": row["id"], "kind": "tamper", "reason": "covered", "start_ts": T0 + 0.1}
        cam.frame(tamper())
        cam.frame(tamper(T0 + 0.2, 2), "end")
        [row] = cam.stored("tamper")
        assert row["end_ts"] == T0 + 0.2 and row["type"] == "ended" and cam.sink.status() is None
        assert cam.metric('vad_camera_tampered{camera="cam"} 0.0') and cam.stored("anomaly") == []
        assert cam.boundary.faults() == {}
    finally:
        cam.close()


def test_a_disarmed_camera_reports_a_tamper_but_no_scene_change(tmp_path):
    cam = Camera(tmp_path)
    try:
        cam.frame(tamper(), "start", armed=False)
        assert [r["reason"] for r in cam.stored("tamper")] == ["covered"]
        cam.frame(tamper(T0 + 0.3, 3), "end", armed=False)
        cam.frame(scene_change(), "start", armed=False)
        assert cam.stored("scene_change") == []
        # a scene change open when the camera is disarmed ends at the last armed frame, with the reason
        cam.frame(scene_change(), "start")
        cam.frame(scene_change(), armed=False)
        [row] = cam.stored("scene_change")
        assert row["note"] == "the camera was disarmed" and row["type"] == "cut"
    finally:
        cam.close()


def test_set_to_follow_arming_a_tamper_going_on_when_the_camera_is_armed_again_starts_there(tmp_path):
    cam = Camera(tmp_path, tamper_when_disarmed=False)
    try:
        cam.frame(tamper(), "start", armed=False)
        cam.frame(tamper(), armed=False)
        assert cam.stored("tamper") == []  # set to follow arming: nothing while disarmed
        cam.frame(tamper())  # armed again, the lens still covered
        [row] = cam.stored("tamper")
        assert row["start_ts"] == T0 + 0.3 and row["start_frame"] == 3
        cam.frame(tamper(T0 + 0.4, 4), "end")
        assert cam.stored("tamper")[0]["end_ts"] == T0 + 0.4
    finally:
        cam.close()
