"""Camera events (tamper, scene change) in the event store, without a running service: stored beside the
anomaly events with their kind, reason and detail; filtered by ``kind``; a database from before them gets
the columns and its rows read as anomalies; a restart closes one left open; feedback is refused."""

from __future__ import annotations

import sqlite3

import pytest

from amvad.runtime.errors import Invalid
from amvad.runtime.types import AnomalyEvent, CameraEvent
from amvad.service.event_store import EventStore, NotAnAnomaly
from amvad.service.evidence import repair_evidence

T = 1_764_064_800.0  # 2025-11-25T10:00:00Z
DETAIL = {"brightness": 0.04, "contrast": 0.003, "baseline": {"brightness": 0.45, "contrast": 0.18}}


def tamper(start: float, end: float | None = None) -> CameraEvent:
    return CameraEvent(1, "tamper", "covered", start, 100, end, None if end is None else 160, DETAIL)


def test_camera_events_are_stored_beside_anomalies_and_filtered_by_kind(tmp_path):
    store = EventStore(tmp_path / "events.sqlite3")
    anomaly = store.open(camera="gate", model="m", threshold=1.5, event=AnomalyEvent(0, T, 5, 9.0, 7))["id"]
    store.close(anomaly, AnomalyEvent(0, T, 5, 9.0, 7, T + 3, 35))
    row = store.open_camera_event(camera="gate", model="m", threshold=1.5, event=tamper(T + 60))
    # open: answered from memory with its kind, reason and detail, and no score
    assert (row["kind"], row["reason"], row["detail"], row["peak_score"], row["type"]) == (
        "tamper", "covered", DETAIL, None, "ongoing")
    closed = store.close_camera_event(row["id"], tamper(T + 60, T + 66))
    assert closed["end_ts"] == T + 66 and closed["duration_s"] == 6.0 and closed["kind"] == "tamper"
    change = store.open_camera_event(camera="door", model="m", threshold=1.5, event=CameraEvent(
        2, "scene_change", "lighting", T + 90, 900, T + 93, 930, {"brightness": 0.6}))
    store.close_camera_event(change["id"], CameraEvent(2, "scene_change", "lighting", T + 90, 900, T + 93, 930))
    assert store.flush(10)
    # read back from the file: the same shape
    got = store.get("gate", row["id"])
    assert (got["kind"], got["reason"], got["detail"], got["peak_score"], got["peak_frame"]) == (
        "tamper", "covered", DETAIL, None, None)
    assert [e["kind"] for e in store.query()] == ["scene_change", "tamper", "anomaly"]
    assert [e["id"] for e in store.query(event_kind="anomaly")] == [anomaly]
    assert [e["id"] for e in store.query(event_kind="tamper", kind="ended")] == [row["id"]]
    assert store.count(event_kind="scene_change") == 1 and store.count(event_kind="tamper", camera="door") == 0
    with pytest.raises(Invalid, match="kind must be one of"):
        store.query(event_kind="fire")
    # feedback is for anomalies (a covered lens marked "normal" must never become fit footage)
    with pytest.raises(NotAnAnomaly, match="not an anomaly"):
        store.set_feedback("gate", row["id"], "normal")
    assert store.set_feedback("gate", anomaly, "normal")["feedback"] == "normal"
    store.close_db()


def test_a_database_from_before_camera_events_reads_as_anomalies_and_takes_camera_events(tmp_path):
    db = sqlite3.connect(tmp_path / "events.sqlite3")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, camera TEXT NOT NULL, model TEXT, "
               "threshold REAL NOT NULL, start REAL NOT NULL, start_frame INTEGER NOT NULL, end REAL, "
               "end_frame INTEGER, peak_score REAL NOT NULL, peak_frame INTEGER NOT NULL, feedback TEXT, clip TEXT, "
               "snapshot TEXT, evidence_bytes INTEGER NOT NULL DEFAULT 0, note TEXT, scores TEXT, clip_start REAL)")
    db.execute("INSERT INTO events (camera, threshold, start, start_frame, end, end_frame, peak_score, peak_frame) "
               "VALUES ('gate', 1.0, ?, 0, ?, 5, 2.0, 3)", (T, T + 1))
    db.commit()
    db.close()
    store = EventStore(tmp_path / "events.sqlite3")
    old = store.get("gate", 1)
    assert (old["kind"], old["reason"], old["detail"], old["peak_score"]) == ("anomaly", None, None, 2.0)
    eid = store.open_camera_event(camera="gate", model="m", threshold=1.0, event=tamper(T + 5))["id"]
    assert store.flush(10)
    assert [e["id"] for e in store.query(event_kind="anomaly")] == [1]
    assert [e["id"] for e in store.query(event_kind="tamper")] == [eid]
    store.close_db()


def test_a_camera_event_left_open_by_a_killed_service_is_closed_at_the_next_start(tmp_path):
    store = EventStore(tmp_path / "events.sqlite3")
    eid = store.open_camera_event(camera="gate", model="m", threshold=1.0, event=tamper(T))["id"]
    assert store.flush(10)
    store.close_db()
    again = EventStore(tmp_path / "events.sqlite3")
    assert repair_evidence(again, tmp_path / "evidence")["closed"] == 1
    assert again.flush(10)
    row = again.get("gate", eid)
    assert row["type"] == "cut" and row["kind"] == "tamper" and row["note"].startswith("interrupted")
    again.close_db()
