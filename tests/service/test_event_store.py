"""The event store (SQLite) and evidence retention, without a running service."""

from __future__ import annotations

import sqlite3
import time

import pytest

from amvad.runtime.types import AnomalyEvent
from amvad.service.config import CameraEventsConfig
from amvad.service.event_store import EventStore, UnknownEvent, parse_time
from amvad.service.evidence import EventEvidence


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


def test_writes_wait_while_another_process_locks_the_database_and_none_is_lost(tmp_path):
    health = []
    store = EventStore(tmp_path / "events.sqlite3", on_health=lambda up, pending: health.append((up, pending)))
    lock = sqlite3.connect(str(tmp_path / "events.sqlite3"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    t0 = time.monotonic()
    row = store.open(camera="gate", model="m", threshold=1.0, event=AnomalyEvent(0, 100.0, 1, 2.0, 1))
    closed = store.close(row["id"], AnomalyEvent(row["id"], 100.0, 1, 3.0, 4, 105.0, 9))
    assert time.monotonic() - t0 < 0.5  # the camera never waits on SQLite
    assert closed["id"] == row["id"] and closed["end_ts"] == 105.0 and closed["peak_score"] == 3.0
    assert store.get("gate", row["id"])["end_ts"] == 105.0  # answered from memory meanwhile
    assert not store.flush(3) and not store.up and store.pending == 2
    lock.execute("COMMIT")
    lock.close()
    assert store.flush(10) and store.up
    assert [e["id"] for e in store.query(camera="gate")] == [row["id"]]
    assert (False, 2) in health and health[-1] == (True, 0)
    again = store.open(camera="gate", model="m", threshold=1.0, event=AnomalyEvent(0, 200.0, 1, 2.0, 1))
    assert again["id"] == row["id"] + 1
    store.close_db()


def test_a_database_found_broken_while_running_is_moved_aside_and_writes_go_on(tmp_path, monkeypatch):
    # given a store whose next write finds the file is no longer a database (as SQLite reports it)
    path = tmp_path / "events.sqlite3"
    store = EventStore(path)
    first = add_event(store, "gate", 100.0, 101.0)
    apply, broken = store._apply, [True]

    def apply_once_broken(op, args):
        if broken.pop() if broken else False:
            raise sqlite3.DatabaseError("file is not a database")
        apply(op, args)

    monkeypatch.setattr(store, "_apply", apply_once_broken)
    row = store.open(camera="gate", model="m", threshold=1.0, event=AnomalyEvent(0, 300.0, 1, 2.0, 1))
    # then the file is kept aside, a fresh one takes the write, and ids go on from where they were
    assert store.flush(15), store.last_error
    assert row["id"] > first and store.get("gate", row["id"])["start_ts"] == 300.0
    assert list(tmp_path.glob("events.sqlite3.broken-*")) and store.up
    store.close_db()


def test_event_ids_beyond_sqlite_integers_are_unknown(tmp_path):
    store = EventStore(tmp_path / "events.sqlite3")
    for event_id in (0, -5, 2 ** 63, 10 ** 30):
        with pytest.raises(UnknownEvent):
            store.get("gate", event_id)
    store.close_db()
