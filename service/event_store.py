"""Anomaly events of every camera in SQLite (``<state_dir>/events.sqlite3``): history, evidence files and
operator feedback that survive restarts. Times are stored as Unix seconds and shown as ISO-8601 (UTC)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    camera TEXT NOT NULL,
    model TEXT,
    threshold REAL NOT NULL,
    start REAL NOT NULL,
    start_frame INTEGER NOT NULL,
    end REAL,
    end_frame INTEGER,
    peak_score REAL NOT NULL,
    peak_frame INTEGER NOT NULL,
    feedback TEXT,
    clip TEXT,
    snapshot TEXT,
    evidence_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_camera_start ON events (camera, start);
"""
FEEDBACK = ("normal", "anomaly")


class UnknownEvent(LookupError):
    """An event id that does not exist for that camera (HTTP 404)."""


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def parse_time(value: str | None, name: str) -> float | None:
    """An ISO-8601 time (a naive one is UTC) as Unix seconds; ValueError names the parameter."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: expected an ISO-8601 time such as 2026-11-25T10:00:00Z, got {value!r}") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


class EventStore:
    """Thread-safe: cameras' publish threads write, HTTP handlers read."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def open(self, *, camera: str, model: str, threshold: float, start: float, start_frame: int,
             peak_score: float, peak_frame: int) -> int:
        cur = self._run("INSERT INTO events (camera, model, threshold, start, start_frame, peak_score, peak_frame) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (camera, model, threshold, start, start_frame, peak_score,
                                                         peak_frame))
        return int(cur.lastrowid)

    def close(self, event_id: int, *, end: float, end_frame: int, peak_score: float, peak_frame: int) -> None:
        self._run("UPDATE events SET end = ?, end_frame = ?, peak_score = ?, peak_frame = ? WHERE id = ?",
                  (end, end_frame, peak_score, peak_frame, event_id))

    def set_evidence(self, event_id: int, *, clip: str | None = None, snapshot: str | None = None,
                     add_bytes: int = 0) -> None:
        self._run("UPDATE events SET clip = COALESCE(?, clip), snapshot = COALESCE(?, snapshot), "
                  "evidence_bytes = evidence_bytes + ? WHERE id = ?", (clip, snapshot, add_bytes, event_id))

    def drop_evidence(self, event_id: int) -> None:
        self._run("UPDATE events SET clip = NULL, snapshot = NULL, evidence_bytes = 0 WHERE id = ?", (event_id,))

    def set_feedback(self, camera: str, event_id: int, label: str) -> dict:
        if label not in FEEDBACK:
            raise ValueError(f"label must be one of {list(FEEDBACK)}, got {label!r}")
        self.get(camera, event_id)
        self._run("UPDATE events SET feedback = ? WHERE id = ?", (label, event_id))
        return self.get(camera, event_id)

    def get(self, camera: str, event_id: int) -> dict:
        row = self._run("SELECT * FROM events WHERE id = ? AND camera = ?", (event_id, camera)).fetchone()
        if row is None:
            raise UnknownEvent(f"camera {camera!r} has no event {event_id}")
        return self._dict(row)

    def query(self, *, camera: str | None = None, since: float | None = None, until: float | None = None,
              limit: int = 100, feedback: str | None = None) -> list[dict]:
        """Newest first; ``since``/``until`` bound the start time."""
        where, args = [], []
        for cond, value in (("camera = ?", camera), ("start >= ?", since), ("start <= ?", until),
                            ("feedback = ?", feedback)):
            if value is not None:
                where.append(cond)
                args.append(value)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._run(sql + " ORDER BY start DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._dict(r) for r in rows]

    def with_evidence(self, camera: str) -> list[dict]:
        """The camera's events that still have evidence files, oldest first (what retention removes)."""
        rows = self._run("SELECT * FROM events WHERE camera = ? AND evidence_bytes > 0 AND end IS NOT NULL "
                         "ORDER BY start", (camera,)).fetchall()
        return [self._dict(r) for r in rows]

    def evidence_bytes(self, camera: str) -> int:
        row = self._run("SELECT COALESCE(SUM(evidence_bytes), 0) FROM events WHERE camera = ?", (camera,)).fetchone()
        return int(row[0])

    def close_db(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _dict(row: sqlite3.Row) -> dict:
        """JSON shape: ``start``/``end`` ISO-8601; ``start_ts``/``end_ts`` Unix seconds; ``duration_s``."""
        d = dict(row)
        d["start_ts"], d["end_ts"] = d["start"], d["end"]
        d["start"], d["end"] = iso(d["start_ts"]), iso(d["end_ts"])
        d["duration_s"] = None if d["end_ts"] is None else round(d["end_ts"] - d["start_ts"], 3)
        return d
