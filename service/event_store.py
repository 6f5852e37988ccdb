"""Anomaly events of every camera in SQLite (``<state_dir>/events.sqlite3``): history, evidence files and
operator feedback that survive restarts. Times are stored as Unix seconds and shown as ISO-8601 (UTC).

Cameras never wait on SQLite. Their writes (an event opened or closed, evidence added or removed) go to a
bounded outbox that one writer thread applies in order. While the database refuses (locked by another
process, read-only, disk full) the writes wait there and are retried every ``RETRY_S``; a database that is
no longer a database is moved aside and started afresh. Event ids are handed out in memory, so an event
has its id (and its notification, clip and snapshot names) at once, whatever the database is doing; until
its row is written :meth:`get` answers from memory. ``up``, ``pending`` and ``last_error`` say how the
database is doing (metrics ``vad_event_store_up`` / ``vad_event_store_pending``).

Each event also keeps its score curve (``scores``): the camera's per-frame messages from ``context_s``
before its start until its end (plus the cooldown before the end is known), taken from the camera's ring of
recent messages (:meth:`follow_scores`) when the event opens and again when it closes, so past events keep
a curve to review after the ring has moved on. An event longer than the ring has a gap in the middle.

Camera events (``kind`` ``tamper`` or ``scene_change``, runtime/camera_watch.py) live in the same table, so
one list, filter and retention serve both; an anomaly's row has ``kind`` NULL (rows from before camera
events) or ``anomaly``. A camera event has a ``reason`` and a ``detail`` (JSON: what was measured), no
score: its ``peak_score`` is stored as 0 (the column predates it and is NOT NULL) and shown as null.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from amvad.runtime.errors import Invalid, NotFound, Unavailable
from amvad.runtime.types import AnomalyEvent, CameraEvent

log = logging.getLogger("amvad.events")
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
    evidence_bytes INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    scores TEXT,
    clip_start REAL,
    kind TEXT,
    reason TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_camera_start ON events (camera, start);
"""
COLUMNS = ("id", "camera", "model", "threshold", "start", "start_frame", "end", "end_frame", "peak_score",
           "peak_frame", "feedback", "clip", "snapshot", "evidence_bytes", "note", "scores", "clip_start", "kind",
           "reason", "detail")
ADDED_COLUMNS = {"note": "TEXT", "scores": "TEXT", "clip_start": "REAL",  # columns later than the first schema
                 "kind": "TEXT", "reason": "TEXT", "detail": "TEXT"}
FEEDBACK = ("normal", "anomaly")
# what ``type`` says of an event: still open; ended by the score rules; ended by the service (disarmed,
# stopped, model changed, interrupted; ``note`` says which)
TYPES = {"ongoing": "end IS NULL", "ended": "end IS NOT NULL AND note IS NULL",
         "cut": "end IS NOT NULL AND note IS NOT NULL"}
# what an event is: an anomaly in the scene, or the camera itself changed (``kind``, ``?kind=``)
KINDS = {"anomaly": "(kind IS NULL OR kind = 'anomaly')", "tamper": "kind = 'tamper'",
         "scene_change": "kind = 'scene_change'"}
ScoreSource = Callable[[str], Sequence[dict]]  # camera -> its recent per-frame messages, oldest first
RETRY_S = 1.0        # how often a refused write is tried again
BUSY_TIMEOUT_S = 2.0  # how long one statement waits for another process's lock
MAX_ID = 2 ** 63 - 1


class UnknownEvent(NotFound):
    """An event id that does not exist for that camera (HTTP 404)."""


class BadFeedback(Invalid):
    """A feedback label that is not one of ``FEEDBACK`` (HTTP 422)."""


class NotAnAnomaly(Invalid):
    """Feedback on a camera event (HTTP 422): feedback says whether an anomaly was real, and clips marked
    normal become fit footage, which a covered lens must never be."""


class StoreUnavailable(Unavailable):
    """The event database cannot be read or written right now (HTTP 503)."""


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


def as_json(row: dict) -> dict:
    """JSON shape of a row: ``start``/``end`` ISO-8601; ``start_ts``/``end_ts`` Unix seconds; ``duration_s``;
    ``type`` (see ``TYPES``); ``kind`` (see ``KINDS``), for camera events ``reason`` and ``detail``. The score
    curve is left out (:meth:`EventStore.scores` has it)."""
    d = dict(row)
    d.pop("scores", None)
    d.pop("clip_start", None)
    d["kind"] = d.get("kind") or "anomaly"
    detail = d.get("detail")
    d["detail"] = json.loads(detail) if isinstance(detail, str) else detail
    if d["kind"] != "anomaly":  # no score: the stored 0 is a placeholder for a NOT NULL column
        d["peak_score"] = d["peak_frame"] = None
    d["start_ts"], d["end_ts"] = d["start"], d["end"]
    d["start"], d["end"] = iso(d["start_ts"]), iso(d["end_ts"])
    d["duration_s"] = None if d["end_ts"] is None else round(d["end_ts"] - d["start_ts"], 3)
    d["type"] = "ongoing" if d["end_ts"] is None else "cut" if d["note"] else "ended"
    return d


def scores_since(messages: Sequence[dict] | None, t0: float) -> list[tuple[float, float | None]]:
    """(capture time, score) of the messages at or after ``t0``; a score is None while warming up. The ring
    is copied first: its camera appends to it meanwhile (a copy that saw it change is taken again)."""
    copy: list[dict] = []
    for _ in range(3):
        try:
            copy = list(messages or ())
            break
        except RuntimeError:  # "deque mutated during iteration"
            continue
    return [(m["timestamp"], m["score"]) for m in copy if m["timestamp"] >= t0]


def relative(points: list[tuple[float, float | None]], start: float) -> list[list]:
    """``[[seconds from the start, score], ...]``: the curve as stored and served."""
    return [[round(t - start, 3), s] for t, s in points]


def encode_scores(points: list[tuple[float, float | None]], start: float) -> str:
    return json.dumps(relative(points, start), separators=(",", ":"))


def _is_broken(exc: sqlite3.Error) -> bool:
    """A file that is no longer a usable database (as opposed to one that is busy, read-only or full)."""
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and ("not a database" in msg or "malformed" in msg)


class EventStore:
    """Thread-safe: cameras write through the outbox, HTTP handlers read (and set feedback) directly.
    ``on_health(up, pending)`` is called whenever either changes (the service's metrics)."""

    def __init__(self, path: Path, *, max_pending: int = 10_000,
                 on_health: Callable[[bool, int], None] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_pending, self._on_health = max_pending, on_health
        self.up, self.last_error, self.dropped = True, None, 0
        self._lock = threading.Lock()        # the API connection
        self._cv = threading.Condition()     # the outbox, the rows not yet written, the ids
        self._outbox: deque[tuple[str, tuple]] = deque()
        self._unwritten: dict[int, dict] = {}  # rows opened here whose latest state is not in the file yet
        self._score_source: ScoreSource | None = None
        self.context_s = 5.0
        self._following: dict[int, tuple[Sequence[dict], list]] = {}  # open event -> its camera's ring, points
        self._api = self._connect(repair=True)
        self._bg = self._connect()
        self._next_id = self._max_id() + 1
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="event-store", daemon=True)
        self._writer.start()

    # -- connections ---------------------------------------------------------------------------
    def _connect(self, repair: bool = False) -> sqlite3.Connection:
        try:
            return self._open_db()
        except sqlite3.Error as exc:
            if not (repair and _is_broken(exc)):
                raise
            self._move_aside(exc)
            return self._open_db()

    def _open_db(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                             timeout=BUSY_TIMEOUT_S)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(events)")}
            for name, kind in ADDED_COLUMNS.items():  # a database from before the column existed
                if name not in have:
                    db.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _move_aside(self, exc: sqlite3.Error) -> None:
        """Keep a broken database for inspection and start an empty one in its place."""
        aside = self.path.with_name(f"{self.path.name}.broken-{int(time.time())}")
        log.error("event database %s is unusable (%s); moved to %s, starting a new one", self.path, exc, aside.name)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.replace(Path(str(aside) + suffix))

    def _max_id(self) -> int:
        with self._lock:
            rows = self._api.execute("SELECT MAX(id) FROM events UNION ALL "
                                     "SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchall()
        return max([0, *(int(r[0]) for r in rows if r[0] is not None)])

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        try:
            with self._lock:
                return self._api.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the event database cannot be read right now: {exc}") from None

    # -- camera writes (never block, never raise) -------------------------------------------------
    def follow_scores(self, source: ScoreSource, context_s: float) -> None:
        """Keep each new event's score curve from ``context_s`` before its start, read from ``source``
        (the camera's ring of recent messages, read on the thread that opens and closes its events)."""
        self._score_source, self.context_s = source, context_s

    def _ring(self, camera: str) -> Sequence[dict] | None:
        if self._score_source is None:
            return None
        try:
            return self._score_source(camera)
        except Exception as exc:  # e.g. the camera is already gone: the event keeps no curve, nothing fails
            log.debug("no recent scores of camera %s: %s", camera, exc)
            return None

    def open(self, *, camera: str, model: str | None, threshold: float, event: AnomalyEvent) -> dict:
        """Record a new event; returns its JSON shape with the id it got."""
        ring = self._ring(camera)
        points = scores_since(ring, event.start - self.context_s)
        with self._cv:
            event_id, self._next_id = self._next_id, self._next_id + 1
            row = {c: None for c in COLUMNS} | {
                "id": event_id, "camera": camera, "model": model, "threshold": threshold, "start": event.start,
                "start_frame": event.start_frame, "peak_score": event.peak_score, "peak_frame": event.peak_frame,
                "evidence_bytes": 0, "scores": encode_scores(points, event.start) if ring is not None else None}
            self._unwritten[event_id] = row
            if ring is not None:
                self._following[event_id] = (ring, points)
            self._enqueue("open", (dict(row),))
        return as_json(row)

    def open_camera_event(self, *, camera: str, model: str | None, threshold: float, event: CameraEvent) -> dict:
        """Record a new tamper or scene change (no score curve: its frames are not scored)."""
        with self._cv:
            event_id, self._next_id = self._next_id, self._next_id + 1
            row = {c: None for c in COLUMNS} | {
                "id": event_id, "camera": camera, "model": model, "threshold": threshold, "start": event.start,
                "start_frame": event.start_frame, "peak_score": 0.0, "peak_frame": event.start_frame,
                "evidence_bytes": 0, "kind": event.type, "reason": event.reason,
                "detail": json.dumps(event.detail, separators=(",", ":"))}
            self._unwritten[event_id] = row
            self._enqueue("open", (dict(row),))
        return as_json(row)

    def close_camera_event(self, event_id: int, event: CameraEvent, note: str | None = None) -> dict | None:
        """Record the end of a camera event; returns its JSON shape when this process opened it."""
        return self.close(event_id, AnomalyEvent(event_id, event.start, event.start_frame, 0.0, event.start_frame,
                                                 event.end, event.end_frame), note=note)

    def _points_now(self, event_id: int, start: float) -> list | None:
        """Under ``_cv``: the curve of an event open here, from its opening up to the ring's newest message."""
        followed = self._following.get(event_id)
        if followed is None:
            return None
        ring, points = followed
        last = points[-1][0] if points else start - self.context_s - 1
        return points + [p for p in scores_since(ring, start - self.context_s) if p[0] > last]

    def close(self, event_id: int, event: AnomalyEvent, note: str | None = None) -> dict | None:
        """Record the end of an event; returns its JSON shape when this process opened it."""
        end = event.end if event.end is not None else event.start
        end_frame = event.end_frame if event.end_frame is not None else event.start_frame
        with self._cv:
            points = self._points_now(event_id, event.start)
            self._following.pop(event_id, None)
            scores = None if points is None else encode_scores(points, event.start)
            row = self._unwritten.get(event_id)
            if row is not None:
                row.update(end=end, end_frame=end_frame, peak_score=event.peak_score, peak_frame=event.peak_frame,
                           note=note, scores=scores or row["scores"])
            self._enqueue("close", (event_id, end, end_frame, event.peak_score, event.peak_frame, note, scores))
            return None if row is None else as_json(row)

    def set_evidence(self, event_id: int, *, clip: str | None = None, snapshot: str | None = None,
                     add_bytes: int = 0, clip_start: float | None = None) -> None:
        """``clip_start``: the capture time of the clip's first frame (its time 0), to align the curve."""
        with self._cv:
            row = self._unwritten.get(event_id)
            if row is not None:
                row.update(clip=clip or row["clip"], snapshot=snapshot or row["snapshot"],
                           evidence_bytes=row["evidence_bytes"] + add_bytes,
                           clip_start=row["clip_start"] if clip_start is None else clip_start)
            self._enqueue("evidence", (clip, snapshot, add_bytes, clip_start, event_id))

    def drop_evidence(self, event_id: int) -> None:
        with self._cv:
            self._enqueue("drop_evidence", (event_id,))

    def _enqueue(self, op: str, args: tuple) -> None:
        """Under ``_cv``. A full outbox loses its oldest write (counted, logged): memory stays bounded."""
        if len(self._outbox) >= self.max_pending:
            lost = self._outbox.popleft()
            self.dropped += 1
            log.error("event database outbox full (%d writes); dropped the oldest (%s)", self.max_pending, lost[0])
        self._outbox.append((op, args))
        self._cv.notify_all()

    # -- the writer thread ------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._outbox and not self._closing:
                    self._cv.wait()
                if not self._outbox:
                    return
                op, args = self._outbox[0]
            try:
                self._apply(op, args)
            except sqlite3.Error as exc:
                self._failed(exc)
                with self._cv:
                    if self._closing:  # close_db already waited for the database; what is left is lost
                        return
                    self._cv.wait(RETRY_S)
                continue
            except Exception:  # a bug must not stop every later write: log it and move on
                log.exception("event database write %s failed; skipped", op)
            with self._cv:
                if self._outbox and self._outbox[0][1] is args:
                    self._outbox.popleft()
                self._forget_written(op, args)
                recovered = not self.up
                self.up, pending = True, len(self._outbox)
            if recovered:
                log.warning("event database writable again; %d write(s) still to apply", pending)
            self._report()

    def _apply(self, op: str, args: tuple) -> None:
        db = self._bg
        if op == "open":
            row = args[0]
            db.execute(f"INSERT OR IGNORE INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                       tuple(row[c] for c in COLUMNS))
        elif op == "close":
            db.execute("UPDATE events SET end = ?, end_frame = ?, peak_score = ?, peak_frame = ?, "
                       "note = COALESCE(?, note), scores = COALESCE(?, scores) WHERE id = ?", (*args[1:], args[0]))
        elif op == "evidence":
            db.execute("UPDATE events SET clip = COALESCE(?, clip), snapshot = COALESCE(?, snapshot), "
                       "evidence_bytes = evidence_bytes + ?, clip_start = COALESCE(?, clip_start) WHERE id = ?",
                       args)
        elif op == "drop_evidence":
            db.execute("UPDATE events SET clip = NULL, snapshot = NULL, evidence_bytes = 0, clip_start = NULL "
                       "WHERE id = ?", args)

    def _forget_written(self, op: str, args: tuple) -> None:
        """Under ``_cv``: a closed event whose every write is in the file is no longer kept in memory."""
        event_id = args[0] if op == "close" else None
        if event_id is not None and not any(o == "close" and a[0] == event_id for o, a in self._outbox):
            self._unwritten.pop(event_id, None)

    def _failed(self, exc: sqlite3.Error) -> None:
        first = self.up
        self.up, self.last_error = False, f"{type(exc).__name__}: {exc}"
        if first:
            log.error("event database refuses writes (%s); %d kept in memory and retried every %.0f s",
                      self.last_error, len(self._outbox), RETRY_S)
        if _is_broken(exc):
            self._reconnect_fresh(exc)
        self._report()

    def _reconnect_fresh(self, exc: sqlite3.Error) -> None:
        self._bg.close()
        with self._lock:
            self._api.close()
            self._move_aside(exc)
            self._api = self._open_db()
        self._bg = self._open_db()
        with self._cv:  # the rows of this process's open events go back in, so their updates apply
            for row in self._unwritten.values():
                self._outbox.appendleft(("open", (dict(row),)))

    def _report(self) -> None:
        if self._on_health is not None:
            self._on_health(self.up, len(self._outbox))

    @property
    def pending(self) -> int:
        return len(self._outbox)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued write is in the file (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._outbox and time.monotonic() < deadline:
                self._cv.wait(0.05)
            return not self._outbox

    # -- reads and operator writes (HTTP handlers) ---------------------------------------------
    def set_feedback(self, camera: str, event_id: int, label: str) -> dict:
        if label not in FEEDBACK:
            raise BadFeedback(f"label must be one of {list(FEEDBACK)}, got {label!r}")
        event = self.get(camera, event_id)
        if event["kind"] != "anomaly":
            raise NotAnAnomaly(f"event {event_id} is a {event['kind']} ({event['reason']}), not an anomaly: "
                               f"feedback is for anomaly events")
        try:
            with self._lock:
                self._api.execute("UPDATE events SET feedback = ? WHERE id = ?", (label, event_id))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the event database cannot be written right now: {exc}") from None
        return self.get(camera, event_id)

    def get(self, camera: str, event_id: int) -> dict:
        if not 0 < event_id <= MAX_ID:
            raise UnknownEvent(f"camera {camera!r} has no event {event_id}")
        with self._cv:
            row = self._unwritten.get(event_id)
            if row is not None and row["camera"] == camera:
                return as_json(row)
        rows = self._read("SELECT * FROM events WHERE id = ? AND camera = ?", (event_id, camera))
        if not rows:
            raise UnknownEvent(f"camera {camera!r} has no event {event_id}")
        return as_json(dict(rows[0]))

    @staticmethod
    def _where(camera: str | None, since: float | None, until: float | None, feedback: str | None,
               kind: str | None, event_kind: str | None = None) -> tuple[str, list]:
        """The WHERE clause of the filters; ``feedback="none"``: not given yet; ``kind``: one of ``TYPES``
        (ongoing, ended, cut); ``event_kind``: one of ``KINDS`` (anomaly, tamper, scene_change)."""
        if feedback is not None and feedback not in (*FEEDBACK, "none"):
            raise BadFeedback(f"feedback must be one of {[*FEEDBACK, 'none']}, got {feedback!r}")
        if kind is not None and kind not in TYPES:
            raise Invalid(f"type must be one of {list(TYPES)}, got {kind!r}")
        if event_kind is not None and event_kind not in KINDS:
            raise Invalid(f"kind must be one of {list(KINDS)}, got {event_kind!r}")
        where, args = [], []
        for cond, value in (("camera = ?", camera), ("start >= ?", since), ("start <= ?", until),
                            ("feedback = ?", None if feedback == "none" else feedback)):
            if value is not None:
                where.append(cond)
                args.append(value)
        if feedback == "none":
            where.append("feedback IS NULL")
        if kind is not None:
            where.append(TYPES[kind])
        if event_kind is not None:
            where.append(KINDS[event_kind])
        return (" WHERE " + " AND ".join(where) if where else ""), args

    def query(self, *, camera: str | None = None, since: float | None = None, until: float | None = None,
              limit: int = 100, feedback: str | None = None, kind: str | None = None, offset: int = 0,
              event_kind: str | None = None) -> list[dict]:
        """Newest first; ``since``/``until`` bound the start time; ``offset`` skips that many (paging)."""
        where, args = self._where(camera, since, until, feedback, kind, event_kind)
        rows = self._read("SELECT * FROM events" + where + " ORDER BY start DESC, id DESC LIMIT ? OFFSET ?",
                          (*args, limit, offset))
        return [as_json(dict(r)) for r in rows]

    def count(self, *, camera: str | None = None, since: float | None = None, until: float | None = None,
              feedback: str | None = None, kind: str | None = None, event_kind: str | None = None) -> int:
        """How many events :meth:`query` would list without a limit."""
        where, args = self._where(camera, since, until, feedback, kind, event_kind)
        return int(self._read("SELECT COUNT(*) FROM events" + where, tuple(args))[0][0])

    def cameras(self) -> list[dict]:
        """Every camera that has events (including deleted cameras): its count and newest start."""
        rows = self._read("SELECT camera, COUNT(*), MAX(start) FROM events GROUP BY camera ORDER BY camera")
        return [{"camera": r[0], "events": r[1], "latest": iso(r[2])} for r in rows]

    def scores(self, camera: str, event_id: int) -> dict:
        """An event's score curve: ``points`` ``[[seconds from the start, score or null], ...]`` (empty for an
        event recorded before curves were kept), and ``clip_start_ts``, the capture time of its clip's first
        frame (None when unknown)."""
        event = self.get(camera, event_id)
        with self._cv:
            points = self._points_now(event_id, event["start_ts"])
            row = self._unwritten.get(event_id)
            raw = None if row is None else (row["scores"], row["clip_start"])
        if raw is None:
            rows = self._read("SELECT scores, clip_start FROM events WHERE id = ?", (event_id,))
            raw = (rows[0][0], rows[0][1]) if rows else (None, None)
        stored, clip_start = raw
        curve = (relative(points, event["start_ts"]) if points is not None
                 else json.loads(stored) if stored else [])
        return {"camera": camera, "event": event_id, "threshold": event["threshold"], "start_ts": event["start_ts"],
                "end_ts": event["end_ts"], "clip_start_ts": clip_start, "points": curve}

    def with_evidence(self, camera: str) -> list[dict]:
        """The camera's events that still have evidence files, oldest first (what retention removes)."""
        rows = self._read("SELECT * FROM events WHERE camera = ? AND evidence_bytes > 0 AND end IS NOT NULL "
                          "ORDER BY start", (camera,))
        return [as_json(dict(r)) for r in rows]

    def evidence_bytes(self, camera: str) -> int:
        return int(self._read("SELECT COALESCE(SUM(evidence_bytes), 0) FROM events WHERE camera = ?", (camera,))[0][0])

    def interrupted(self) -> list[dict]:
        """Events left open by a service that stopped without closing them (kill -9, power cut)."""
        with self._cv:
            mine = set(self._unwritten)
        rows = self._read("SELECT * FROM events WHERE end IS NULL ORDER BY id")
        return [as_json(dict(r)) for r in rows if r["id"] not in mine]

    def close_db(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` s; what is left is logged as lost), then close."""
        if not self.flush(timeout):
            log.error("event database: %d write(s) could not be applied before stopping (%s)", self.pending,
                      self.last_error)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._writer.join(RETRY_S + BUSY_TIMEOUT_S + 1)
        with self._lock:
            self._api.close()
        self._bg.close()
