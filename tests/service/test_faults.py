"""Faults a camera must survive, against a real ``amvad serve`` with a real RTSP camera (GStreamer's RTSP
server, H.264 over TCP) and a real webhook receiver: the event database locked by another process or made
unwritable, the evidence folder unwritable, the state directory on a full disk, and a kill -9 mid-event.
In each, the camera keeps publishing over WebSocket during the fault, the service's memory stays flat,
and once the fault goes the event and its notifications are there, and the next event has its evidence.

Events are raised on demand: the camera's threshold is PATCHed far below every score (an event starts
after ``min_duration_s``) and then far above (it ends after ``cooldown_s``). Making files unwritable uses
``chattr +i`` (root ignores file modes); a full disk is a small tmpfs: both need root and skip without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import av
import pytest
from websockets.sync.client import connect

from tests.support.disk import tmpfs
from tests.support.notify import Broker, Receiver, Subscriber
from tests.support.servers import Service, start_service, stop_process, ws_url

pytestmark = pytest.mark.integration
LOW, HIGH = -1e9, 1e9
EVENTS = {"min_duration_s": 0.2, "cooldown_s": 0.5, "pre_roll_s": 0.5, "post_roll_s": 0.5}


class WsCounter:
    """Counts a camera's WebSocket messages in a thread, with their arrival times."""

    def __init__(self, svc: Service, camera: str) -> None:
        self.times: list[float] = []
        self.events: list[str] = []
        self._stop = threading.Event()
        self._ws = connect(ws_url(svc, camera))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = json.loads(self._ws.recv(timeout=0.5))
            except TimeoutError:
                continue
            except Exception:
                return
            self.times.append(time.monotonic())
            if msg.get("event"):
                self.events.append(msg["event"])

    def between(self, t0: float, t1: float) -> int:
        return sum(t0 <= t < t1 for t in self.times)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._ws.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def need_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("fault injection needs root (chattr +i, mount -t tmpfs)")
    probe = tmp_path / "probe"
    probe.write_text("x")
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
        pytest.skip("this filesystem does not support chattr +i")
    chattr("-i", probe)


@contextlib.contextmanager
def camera_world(tmp: Path, model: Path, rtsp_url: str):
    """A service with a webhook receiver and one RTSP camera ``cam`` that is live, and a WebSocket counter."""
    receiver = Receiver()
    # a camera of the config file: its PATCHes are not written to disk, so they work on a full disk too
    extra = {"events": EVENTS, "notify": {"webhooks": [{"url": f"http://127.0.0.1:{receiver.server_port}/hook"}]},
             "cameras": [{"id": "cam", "url": rtsp_url, "threshold": HIGH}],
             "ingest": {"open_timeout_s": 3, "read_timeout_s": 2, "backoff_initial_s": 0.3, "backoff_max_s": 2,
                        "stats_save_s": 1}}
    svc = start_service(tmp, model, extra)
    ws = None
    try:
        svc.wait_for(lambda: svc.http.get("/v1/cameras/cam").json()["state"] == "live", 60, "the camera to be live")
        ws = WsCounter(svc, "cam")
        yield svc, ws, receiver
    finally:
        if ws is not None:
            ws.close()
        svc.http.close()
        stop_process(svc.proc)
        receiver.shutdown()


def set_threshold(svc: Service, value: float) -> None:
    r = svc.http.patch("/v1/cameras/cam", json={"threshold": value})
    assert r.status_code == 200, r.text


def raise_event(svc: Service, ws: WsCounter, hold_s: float = 1.5) -> None:
    """One event, start to end, seen on the WebSocket."""
    starts, ends = ws.events.count("start"), ws.events.count("end")
    set_threshold(svc, LOW)
    svc.wait_for(lambda: ws.events.count("start") > starts, 20, "an event to start")
    time.sleep(hold_s)
    set_threshold(svc, HIGH)
    svc.wait_for(lambda: ws.events.count("end") > ends, 20, "the event to end")


def events(svc: Service) -> list[dict]:
    r = svc.http.get("/v1/events", params={"camera": "cam"})
    return r.json() if r.status_code == 200 else []


def hooks(receiver: Receiver, kind: str) -> list[dict]:
    return [json.loads(body) for _, _, body in receiver.posts if json.loads(body)["type"] == kind]


def assert_published_through(ws: WsCounter, t0: float, t1: float) -> None:
    """The camera (10 fps) kept publishing through the fault: no gap over 1.5 s, at least half its rate."""
    times = [t0, *(t for t in ws.times if t0 <= t < t1), t1]
    gap = max(b - a for a, b in zip(times, times[1:]))
    assert gap <= 1.5, f"no message for {gap:.1f} s during the fault"
    assert len(times) - 2 >= 5 * (t1 - t0), f"{len(times) - 2} messages in {t1 - t0:.0f} s of the fault"


def assert_evidence_resumed(svc: Service, ws: WsCounter) -> None:
    """An event after the fault gets its clip (playable) and snapshot again."""
    raise_event(svc, ws)
    svc.wait_for(lambda: (e := events(svc)) and e[0]["clip"] and e[0]["snapshot"], 30, "evidence of the next event")
    latest = events(svc)[0]
    clip = svc.http.get(f"/v1/cameras/cam/events/{latest['id']}/clip.mp4")
    assert clip.status_code == 200
    path = svc.log.parent / "clip.mp4"
    path.write_bytes(clip.content)
    with av.open(str(path)) as c:
        assert sum(1 for _ in c.decode(video=0)) > 0


def test_a_locked_event_database_delays_events_but_loses_nothing(need_root, tiny_model, rtsp_server, tmp_path):
    with camera_world(tmp_path, tiny_model, rtsp_server.url) as (svc, ws, receiver):
        rss_before = rss_mb(svc.proc.pid)
        db = sqlite3.connect(str(tmp_path / "state" / "events.sqlite3"), isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")  # another process holds the database (as a backup tool might)
        t0 = time.monotonic()
        try:
            raise_event(svc, ws)
            faults = svc.http.get("/v1/cameras/cam").json()["faults"]
            assert "event_store" in faults, faults
            assert "vad_event_store_up 0.0" in svc.http.get("/metrics").text
            # the notifications went out at once, with the event's id, though the database waits
            svc.wait_for(lambda: hooks(receiver, "end"), 10, "the end webhook during the lock")
            time.sleep(max(0.0, 8 - (time.monotonic() - t0)))
        finally:
            db.execute("COMMIT")
            db.close()
        t1 = time.monotonic()
        assert_published_through(ws, t0, t1)
        svc.wait_for(lambda: (e := events(svc)) and e[0]["end"] is not None, 15, "the event in the database")
        stored = events(svc)[0]
        assert stored["id"] == hooks(receiver, "start")[0]["event"]["id"] == hooks(receiver, "end")[0]["event"]["id"]
        svc.wait_for(lambda: not svc.http.get("/v1/cameras/cam").json()["faults"], 10, "the fault to clear")
        assert "vad_event_store_up 1.0" in svc.http.get("/metrics").text
        assert rss_mb(svc.proc.pid) - rss_before < 60


def test_an_unwritable_database_and_evidence_folder(need_root, tiny_model, rtsp_server, tmp_path):
    with camera_world(tmp_path, tiny_model, rtsp_server.url) as (svc, ws, receiver):
        state = tmp_path / "state"
        evidence = state / "events" / "cam"
        evidence.mkdir(parents=True, exist_ok=True)
        locked = [state / "events.sqlite3", state / "events.sqlite3-wal", evidence]
        rss_before = rss_mb(svc.proc.pid)
        chattr("+i", *locked)
        t0 = time.monotonic()
        try:
            raise_event(svc, ws)
            time.sleep(3)
            faults = svc.http.get("/v1/cameras/cam").json()["faults"]
            assert "event_store" in faults and "evidence" in faults, faults
            metrics = svc.http.get("/metrics").text
            assert 'vad_sink_errors_total{camera="cam",sink="evidence"}' in metrics
        finally:
            chattr("-i", *locked)
        t1 = time.monotonic()
        assert_published_through(ws, t0, t1)
        svc.wait_for(lambda: (e := events(svc)) and e[0]["end"] is not None, 15, "the event in the database")
        assert len(hooks(receiver, "start")) == 1 and len(hooks(receiver, "end")) == 1
        assert_evidence_resumed(svc, ws)
        assert rss_mb(svc.proc.pid) - rss_before < 60


def test_a_full_disk_under_the_state_directory(need_root, tiny_model, rtsp_server, tmp_path):
    state = tmp_path / "state"
    with tmpfs(state, "48m"), camera_world(tmp_path, tiny_model, rtsp_server.url) as (svc, ws, receiver):
        raise_event(svc, ws)  # a first event with evidence, before the fault
        rss_before = rss_mb(svc.proc.pid)
        filler = state / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 2 ** 20)
        t0 = time.monotonic()
        raise_event(svc, ws)
        rec = svc.http.post("/v1/cameras/cam/recordings", json={"seconds": 3})
        time.sleep(3)
        faults = svc.http.get("/v1/cameras/cam").json()["faults"]
        assert faults, "a full disk must show in the camera's status"
        filler.unlink()
        t1 = time.monotonic()
        assert_published_through(ws, t0, t1)
        svc.wait_for(lambda: len(events(svc)) >= 2 and events(svc)[0]["end"] is not None, 15,
                     "the event raised on the full disk, in the database")
        assert len(hooks(receiver, "end")) >= 2
        if rec.status_code == 201:  # a recording started on a full disk ends, failed or short, never hangs
            rec_id = rec.json()["id"]
            svc.wait_for(lambda: svc.http.get(f"/v1/recordings/{rec_id}").json()["state"] != "recording",
                         40, "the recording to end")
        assert_evidence_resumed(svc, ws)
        assert rss_mb(svc.proc.pid) - rss_before < 60


def test_kill_9_mid_event_then_restart_closes_it_with_playable_or_no_clip(tiny_model, rtsp_server, tmp_path):
    with camera_world(tmp_path, tiny_model, rtsp_server.url) as (svc, ws, receiver):
        set_threshold(svc, LOW)
        svc.wait_for(lambda: "start" in ws.events, 20, "an event to start")
        time.sleep(3)  # its clip is being written
        event_id = hooks(receiver, "start")[0]["event"]["id"]
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait()
    clip = tmp_path / "state" / "events" / "cam" / f"{event_id}.mp4"
    assert clip.is_file(), "the clip being written is on disk"
    svc = start_service(tmp_path, tiny_model, {"events": EVENTS})
    try:
        event = svc.http.get(f"/v1/cameras/cam/events/{event_id}").json()
        assert event["end"] is not None and "interrupted" in event["note"], event
        r = svc.http.get(f"/v1/cameras/cam/events/{event_id}/clip.mp4")
        if r.status_code == 200:  # fragmented MP4: what was written before the kill plays
            (tmp_path / "got.mp4").write_bytes(r.content)
            with av.open(str(tmp_path / "got.mp4")) as c:
                assert sum(1 for _ in c.decode(video=0)) > 0
        else:
            assert r.status_code == 404 and not clip.exists()
        assert "after an unclean stop" in svc.logs()
    finally:
        svc.http.close()
        stop_process(svc.proc)


def test_a_broken_event_database_is_moved_aside_at_start(tiny_model, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "events.sqlite3").write_bytes(b"this is not a database" * 100)
    svc = start_service(tmp_path, tiny_model)
    try:
        assert svc.http.get("/v1/events").json() == []
        assert list(state.glob("events.sqlite3.broken-*")), "the broken file is kept for inspection"
    finally:
        svc.http.close()
        stop_process(svc.proc)



def test_a_broker_that_comes_back_gets_the_event_but_no_backlog_of_old_scores(tiny_model, rtsp_server, tmp_path):
    broker = Broker(tmp_path)
    broker.start()
    extra = {"events": EVENTS, "cameras": [{"id": "cam", "url": rtsp_server.url, "threshold": HIGH}],
             "notify": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "score_interval_s": 0.2}}}
    svc = start_service(tmp_path, tiny_model, extra)
    ws = sub = None
    try:
        ws = WsCounter(svc, "cam")
        svc.wait_for(lambda: len(ws.times) > 20, 30, "scores")
        broker.kill()
        t0 = time.monotonic()
        set_threshold(svc, LOW)  # an event starts while the broker is away, and stays open
        svc.wait_for(lambda: "start" in ws.events, 20, "an event to start")
        time.sleep(max(0.0, 6 - (time.monotonic() - t0)))
        broker.start()
        assert_published_through(ws, t0, time.monotonic())
        sub = Subscriber(broker.port, client_id="after-outage")
        svc.wait_for(lambda: any(p == b"ON" for _, p in sub.topic("amvad/cam/anomaly")), 30,
                     "the event's state, kept for the broker")
        svc.wait_for(lambda: len(sub.topic("amvad/cam/score")) >= 5, 20, "scores again")
        for received, payload in sub.topic("amvad/cam/score"):
            assert received - json.loads(payload)["time"] < 2.0, "a score from before the outage arrived late"
    finally:
        if sub is not None:
            sub.stop()
        if ws is not None:
            ws.close()
        svc.http.close()
        stop_process(svc.proc)
        broker.stop()
