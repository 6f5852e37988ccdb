"""The event store (SQLite) and evidence retention, without a running service."""

from __future__ import annotations

import time

import pytest

from runtime.types import AnomalyEvent
from service.config import CameraEventsConfig
from service.event_store import EventStore, UnknownEvent, parse_time
from service.evidence import EventEvidence


def add_event(store: EventStore, camera: str, start: float, end: float | None = None) -> int:
    eid = store.open(camera=camera, model="ped2", threshold=1.5, event=AnomalyEvent(0, start, 10, 2.0, 12))["id"]
    if end is not None:
        store.close(eid, AnomalyEvent(eid, start, 10, 3.5, 20, end, 30))
    assert store.flush(10)
    return eid


def test_events_persist_with_iso_times_filters_and_feedback(tmp_path):
    store = EventStore(tmp_path / "events.sqlite3")
    a = add_event(store, "gate", 1_764_064_800.0, 1_764_064_805.5)  # 2025-11-25T10:00:00Z
    b = add_event(store, "gate", 1_764_068_400.0)                   # an hour later, still open
    add_event(store, "door", 1_764_066_600.0, 1_764_066_601.0)
    store.set_feedback("gate", a, "normal")
    store.close_db()
    store = EventStore(tmp_path / "events.sqlite3")  # as after a restart
    first = store.get("gate", a)
    assert first["start"] == "2025-11-25T10:00:00.000+00:00" and first["duration_s"] == 5.5
    assert first["peak_score"] == 3.5 and first["feedback"] == "normal"
    assert [e["id"] for e in store.query(camera="gate")] == [b, a]  # newest first
    assert store.query(camera="gate")[0]["end"] is None
    since = parse_time("2025-11-25T10:20:00Z", "since")
    assert [e["camera"] for e in store.query(since=since)] == ["gate", "door"]
    assert [e["id"] for e in store.query(feedback="normal")] == [a]
    with pytest.raises(UnknownEvent):
        store.get("door", a)  # an event belongs to its camera
    with pytest.raises(ValueError, match="label must be one of"):
        store.set_feedback("gate", a, "maybe")
    with pytest.raises(ValueError, match="since: expected an ISO-8601 time"):
        parse_time("yesterday", "since")


def test_retention_removes_the_oldest_evidence_first(tmp_path):
    store = EventStore(tmp_path / "events.sqlite3")
    folder = tmp_path / "events" / "gate"
    folder.mkdir(parents=True)
    now = time.time()
    ids = []
    for i, age_days in enumerate((40, 3, 2, 1)):
        eid = add_event(store, "gate", now - age_days * 86400, now - age_days * 86400 + 5)
        (folder / f"{eid}.mp4").write_bytes(b"x" * 400_000)
        store.set_evidence(eid, clip=f"{eid}.mp4", add_bytes=400_000)
        ids.append(eid)
    assert store.flush(10)
    evidence = EventEvidence("gate", folder, store, CameraEventsConfig(retain_days=30, max_storage_mb=1.0), lambda: None)
    evidence.enforce_retention()
    assert store.flush(10)
    # the 40-day-old clip goes for its age, the 3-day-old one for space (1 MB for 3 x 0.4 MB)
    kept = [eid for eid in ids if (folder / f"{eid}.mp4").exists()]
    assert kept == ids[2:] and store.evidence_bytes("gate") == 800_000
    assert store.get("gate", ids[0])["clip"] is None
