"""What the review page reads from the event store, without a running service: the type of an event, the
filters it adds (feedback not given yet, type, paging, counts, cameras) and the score curve kept with each
event from its camera's ring of recent messages."""

from __future__ import annotations

import sqlite3
from collections import deque

import pytest

from amvad.runtime.types import AnomalyEvent
from amvad.service.event_store import EventStore

T = 1_764_064_800.0  # 2025-11-25T10:00:00Z


def messages(t0: float, t1: float, score) -> list[dict]:
    """Per-frame messages at 10 frames/s from t0 (inclusive) to t1 (exclusive), as a camera keeps them."""
    n = round((t1 - t0) * 10)
    return [{"timestamp": round(t0 + i / 10, 3), "score": score(t0 + i / 10), "frame_id": i} for i in range(n)]


def event(start: float, end: float | None = None, peak: float = 3.0) -> AnomalyEvent:
    return AnomalyEvent(0, start, 0, peak, 1, end, None if end is None else 2)


def test_type_feedback_none_paging_counts_and_cameras(tmp_path):
    # given events that ended by the scores, were cut short by the service, and one still open
    store = EventStore(tmp_path / "events.sqlite3")
    ended = store.open(camera="gate", model="m", threshold=1.0, event=event(T))["id"]
    store.close(ended, event(T, T + 4))
    cut = store.open(camera="gate", model="m", threshold=1.0, event=event(T + 60))["id"]
    store.close(cut, event(T + 60, T + 61), note="the camera was disarmed")
    ongoing = store.open(camera="door", model="m", threshold=1.0, event=event(T + 120))["id"]
    assert store.flush(10)
    store.set_feedback("gate", ended, "normal")
    # then each says its type, and the filters combine
    assert [(e["id"], e["type"]) for e in store.query()] == [(ongoing, "ongoing"), (cut, "cut"), (ended, "ended")]
    assert [e["id"] for e in store.query(kind="cut")] == [cut]
    assert [e["id"] for e in store.query(feedback="none")] == [ongoing, cut]
    assert [e["id"] for e in store.query(feedback="none", camera="gate")] == [cut]
    assert [e["id"] for e in store.query(limit=1, offset=1)] == [cut]
    assert store.count() == 3 and store.count(kind="ongoing") == 1 and store.count(feedback="normal") == 1
    assert store.count(since=T + 30, until=T + 90) == 1
    assert store.cameras() == [{"camera": "door", "events": 1, "latest": "2025-11-25T10:02:00.000+00:00"},
                               {"camera": "gate", "events": 2, "latest": "2025-11-25T10:01:00.000+00:00"}]
    assert "scores" not in store.get("gate", ended)  # the curve comes on its own
    with pytest.raises(ValueError, match="type must be one of"):
        store.query(kind="odd")
    with pytest.raises(ValueError, match="feedback must be one of"):
        store.count(feedback="maybe")
    store.close_db()


def test_an_event_keeps_its_curve_from_the_pre_roll_to_its_end_after_the_ring_moved_on(tmp_path):
    # given a camera's ring of the last 100 messages, 10 s of low scores, then an anomaly from T
    ring = deque(messages(T - 10, T + 0.5, lambda t: 3.0 if t >= T else 0.5), maxlen=100)
    cameras = {"gate": ring}
    store = EventStore(tmp_path / "events.sqlite3")
    store.follow_scores(lambda camera: cameras[camera], context_s=2.0)
    # when the event opens, the curve starts 2 s before it
    eid = store.open(camera="gate", model="m", threshold=1.0, event=event(T))["id"]
    opened = store.scores("gate", eid)["points"]
    assert opened[0] == [-2.0, 0.5] and opened[-1] == [0.4, 3.0]
    # while it is open the curve follows the ring; the camera may be gone from the manager meanwhile
    ring.extend(messages(T + 0.5, T + 3, lambda t: 3.0 if t < T + 2 else 0.2))
    del cameras["gate"]
    assert store.scores("gate", eid)["points"][-1] == [2.9, 0.2]
    # then it closes; the ring moves on far past the event, and the service restarts
    store.close(eid, event(T, T + 2))
    store.set_evidence(eid, clip=f"{eid}.mp4", add_bytes=1000, clip_start=T - 1.9)
    ring.extend(messages(T + 3, T + 30, lambda t: 0.1))
    store.close_db()
    store = EventStore(tmp_path / "events.sqlite3")
    curve = store.scores("gate", eid)
    # the curve is still the event's: 2 s before it, the anomaly, and the low scores after it ended
    assert curve["points"][0] == [-2.0, 0.5] and curve["points"][-1] == [2.9, 0.2]
    times = [p[0] for p in curve["points"]]
    assert len(times) == 50 and times == sorted(set(times))  # -2.0 ... 2.9 at 10 frames/s, no frame twice
    assert [p[1] for p in curve["points"] if 0 <= p[0] < 2] == [3.0] * 20
    assert curve["threshold"] == 1.0 and curve["clip_start_ts"] == T - 1.9
    assert curve["start_ts"] == T and curve["end_ts"] == T + 2
    store.close_db()


def test_events_without_a_curve_and_databases_from_before_it(tmp_path):
    # given a database written before curves and clip start times were kept
    db = sqlite3.connect(tmp_path / "events.sqlite3")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, camera TEXT NOT NULL, model TEXT, "
               "threshold REAL NOT NULL, start REAL NOT NULL, start_frame INTEGER NOT NULL, end REAL, "
               "end_frame INTEGER, peak_score REAL NOT NULL, peak_frame INTEGER NOT NULL, feedback TEXT, clip TEXT, "
               "snapshot TEXT, evidence_bytes INTEGER NOT NULL DEFAULT 0, note TEXT)")
    db.execute("INSERT INTO events (camera, threshold, start, start_frame, end, end_frame, peak_score, peak_frame) "
               "VALUES ('gate', 1.0, ?, 0, ?, 5, 2.0, 3)", (T, T + 1))
    db.commit()
    db.close()
    store = EventStore(tmp_path / "events.sqlite3")  # no score source: cameras keep no curve either
    assert store.scores("gate", 1) == {"camera": "gate", "event": 1, "threshold": 1.0, "start_ts": T,
                                       "end_ts": T + 1, "clip_start_ts": None, "points": []}
    eid = store.open(camera="gate", model="m", threshold=1.0, event=event(T + 5))["id"]
    store.close(eid, event(T + 5, T + 6))
    assert store.flush(10)
    assert store.scores("gate", eid)["points"] == [] and store.get("gate", eid)["type"] == "ended"
    store.close_db()
