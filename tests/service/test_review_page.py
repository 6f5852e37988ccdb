"""The events review page (GET /review) and the event API it reads, against a real ``amvad serve``.

The service starts on a state directory that already holds five events of two cameras (written through
the event store, with H.264 clips, snapshots and score curves, as a camera leaves them), so the page test
knows what it must show; one more test raises a real event on a live camera and reads its curve. The
page runs in the system Chromium through Playwright, as the live page's test does."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from amvad.runtime.types import AnomalyEvent
from amvad.service.event_store import EventStore
from amvad.service.h264 import H264Writer
from tests.service.test_live_page import COUNT_COLOUR
from tests.support.servers import API_KEY, running_service
from tests.support.synthetic import render_clip

pytestmark = pytest.mark.integration
FPS = 10
# camera, seconds before now, duration, note (cut short), feedback: oldest first
EVENTS = [("gate", 3600, 4.0, None, "anomaly"), ("gate", 1800, 1.0, "the camera was disarmed", None),
          ("door", 600, 2.0, None, "normal"), ("door", 300, 3.0, None, None), ("gate", 60, 3.0, None, None)]


def seed(state: Path) -> list[dict]:
    """The events of ``EVENTS`` as a camera leaves them: rows with a curve (2 s before the start to 1 s after
    the end, 10 frames/s), a clip from 2 s before to 1 s after, a snapshot. Returns them newest first."""
    store, ring = EventStore(state / "events.sqlite3"), deque()
    store.follow_scores(lambda camera: ring, context_s=2.0)
    now, frames = time.time(), [cv2.cvtColor(f, cv2.COLOR_GRAY2RGB) for f in render_clip(60, speed=1.0, seed=3)]
    made = []
    for i, (camera, ago, duration, note, feedback) in enumerate(EVENTS):
        start, peak = now - ago, 2.0 + i / 10
        times = [start - 2 + k / FPS for k in range(round((duration + 3) * FPS))]
        ring.clear()
        ring.extend({"timestamp": t, "score": peak if start <= t <= start + duration else 0.4} for t in times)
        eid = store.open(camera=camera, model="tiny", threshold=1.0, event=AnomalyEvent(0, start, 0, peak, 5))["id"]
        store.close(eid, AnomalyEvent(eid, start, 0, peak, 5, start + duration, 9), note=note)
        folder = state / "events" / camera
        with H264Writer(folder / f"{eid}.mp4") as clip:
            for k, t in enumerate(times):
                clip.write(t, frames[k % len(frames)])
        _, jpg = cv2.imencode(".jpg", cv2.applyColorMap(frames[0], cv2.COLORMAP_JET))
        (folder / f"{eid}.jpg").write_bytes(jpg.tobytes())
        store.set_evidence(eid, clip=f"{eid}.mp4", snapshot=f"{eid}.jpg", clip_start=times[0],
                           add_bytes=(folder / f"{eid}.mp4").stat().st_size + len(jpg))
        assert store.flush(10)
        if feedback:
            store.set_feedback(camera, eid, feedback)
        made.append(store.get(camera, eid))
    store.close_db()
    return made[::-1]


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review")
    events = seed(tmp / "state")
    extra = {"events": {"pre_roll_s": 1.5, "post_roll_s": 0.5, "min_duration_s": 0.2, "cooldown_s": 0.5}}
    with running_service(tmp, tiny_model, extra) as svc:
        yield svc, events


def ids(events: list[dict]) -> list[int]:
    return [e["id"] for e in events]


def test_filters_paging_totals_and_curves_of_the_event_api(world):
    svc, events = world
    by_camera = {c: [e for e in events if e["camera"] == c] for c in ("gate", "door")}
    r = svc.http.get("/v1/events")
    assert ids(r.json()) == ids(events) and r.headers["x-total-count"] == "5"  # newest first
    r = svc.http.get("/v1/events", params={"camera": "gate", "limit": 2, "offset": 1})
    assert ids(r.json()) == ids(by_camera["gate"])[1:3] and r.headers["x-total-count"] == "3"
    assert [e["type"] for e in events] == ["ended", "ended", "ended", "cut", "ended"]
    assert ids(svc.http.get("/v1/events", params={"type": "cut"}).json()) == [events[3]["id"]]
    assert ids(svc.http.get("/v1/events", params={"feedback": "none"}).json()) == [events[0]["id"], events[1]["id"],
                                                                                   events[3]["id"]]
    assert ids(svc.http.get("/v1/events", params={"feedback": "normal", "camera": "door"}).json()) == [events[2]["id"]]
    window = {"since": events[3]["start"], "until": events[1]["start"]}  # both ends included
    assert ids(svc.http.get("/v1/events", params=window).json()) == ids(events[1:4])
    assert svc.http.get("/v1/events/cameras").json() == [
        {"camera": "door", "events": 2, "latest": events[1]["start"]},
        {"camera": "gate", "events": 3, "latest": events[0]["start"]}]
    # the curve of an event: 2 s before its start to 1 s after its end, and where its clip starts
    newest = events[0]
    curve = svc.http.get(f"/v1/cameras/gate/events/{newest['id']}/scores").json()
    assert curve["threshold"] == 1.0 and curve["clip_offset_s"] == pytest.approx(-2.0, abs=0.002)
    assert curve["points"][0] == [-2.0, 0.4] and curve["points"][-1][0] == pytest.approx(3.9, abs=0.002)
    assert max(p[1] for p in curve["points"]) == newest["peak_score"]
    # bad filters are 422 naming the parameter; unknown events 404
    for params, name in (({"feedback": "maybe"}, "feedback"), ({"type": "odd"}, "type"), ({"offset": -1}, "offset"),
                         ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
                         ({"until": "soon"}, "until")):
        r = svc.http.get("/v1/events", params=params)
        assert r.status_code == 422 and r.json()["error"].replace("invalid request: ", "").startswith(name), r.json()
    assert svc.http.get("/v1/cameras/gate/events/999999/scores").status_code == 404
    assert svc.http.get(f"/v1/cameras/door/events/{newest['id']}/scores").status_code == 404  # not door's


def test_review_page_lists_filters_plays_draws_and_takes_feedback(world, browser, tmp_path):
    svc, events = world
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    calls: list[tuple[str, str]] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda req: calls.append((req.method, urlsplit(req.url).path))
            if req.url.startswith(svc.base) else None)  # not the page's own blob: URLs
    rows = "#events tbody tr"
    shown = f"() => [...document.querySelectorAll('{rows}')].map((tr) => Number(tr.dataset.event))"
    try:
        # when a person opens the review page with the API key
        page.goto(f"{svc.base}/review?api_key={API_KEY}")
        page.wait_for_function(f"() => document.querySelectorAll('{rows}').length === 5", timeout=10_000)
        assert "api_key" not in page.url  # the key leaves the address bar
        # then every event is listed newest first, with its camera, duration, type, feedback and thumbnail
        assert page.evaluate(shown) == ids(events)
        first = page.locator(rows).first
        assert first.locator("td.camera").inner_text() == "gate"
        assert first.locator("td.duration").inner_text() == "3.0 s"
        assert first.locator("td.peak").inner_text() == f"{events[0]['peak_score']:.2f}"
        assert page.locator(rows).nth(3).locator("td.type").inner_text() == "cut short"
        assert page.locator(rows).nth(4).locator("td.feedback").inner_text() == "true alarm"
        page.wait_for_function(f"() => [...document.querySelectorAll('{rows} td.thumb img')]"
                               ".filter((i) => i.naturalWidth > 0).length === 5", timeout=10_000)
        assert page.locator("#status").inner_text() == "5 event(s)"
        # filtered by camera, then by feedback not given yet
        page.select_option("select[name=camera]", "door")
        page.wait_for_function(f"() => ({shown})().join() === '{events[1]['id']},{events[2]['id']}'", timeout=5_000)
        page.select_option("select[name=feedback]", "none")
        page.wait_for_function(f"() => ({shown})().join() === '{events[1]['id']}'", timeout=5_000)
        assert "camera=door" in page.url and "feedback=none" in page.url
        # when the event is selected, its clip plays in place and its curve is drawn under it
        page.locator(rows).first.click()
        page.wait_for_function("() => document.querySelector('#detail video').readyState > 0", timeout=10_000)
        assert page.evaluate("() => document.querySelector('#detail video').duration") == pytest.approx(
            events[1]["duration_s"] + 3, abs=0.3)  # 2 s before, 1 s after
        canvas = "#detail canvas"
        page.wait_for_function(f"() => ({COUNT_COLOUR})(['{canvas}', 0, 51, 102]) > 100", timeout=5_000)
        assert page.evaluate(COUNT_COLOUR, [canvas, 221, 0, 0]) > 50  # the threshold line
        # and "false alarm" updates the row and the service
        page.locator("#detail .feedback button[data-label=normal]").click()
        feedback = f'{rows}[data-event="{events[1]["id"]}"] td.feedback'
        page.wait_for_function(f"() => document.querySelector('{feedback}').textContent === 'false alarm'",
                               timeout=5_000)
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'review.png'}")
        assert not errors, errors
    finally:
        page.close()
    assert svc.http.get(f"/v1/cameras/door/events/{events[1]['id']}").json()["feedback"] == "normal"
    assert ids(svc.http.get("/v1/events", params={"feedback": "normal"}).json()) == [events[1]["id"], events[2]["id"]]
    # a viewer's page: only the page, the read-only event endpoints and feedback
    for method, path in calls:
        assert (method, path) == ("GET", "/review") or (method == "GET" and path.startswith("/v1/events")) or (
            method == "GET" and path.startswith("/v1/cameras/") and "/events/" in path) or (
            method == "POST" and path.endswith("/feedback")), (method, path)


def test_a_live_cameras_event_keeps_its_curve_and_the_live_page_links_to_it(world, sample_mp4, browser):
    svc, _ = world
    r = svc.http.post("/v1/cameras", json={"id": "live-cam", "url": sample_mp4.as_uri()})
    assert r.status_code == 201, r.text
    try:
        # given 2 s of scores, a threshold under all of them raises an event; one over all of them ends it
        scored = svc.wait_for(lambda: [m["score"] for m in svc.http.get("/v1/cameras/live-cam/scores").json()
                                       if m["score"] is not None][19:] and
                              [m["score"] for m in svc.http.get("/v1/cameras/live-cam/scores").json()
                               if m["score"] is not None], 60, "2 s of scores")
        assert svc.http.patch("/v1/cameras/live-cam", json={"threshold": min(scored) - 100}).status_code == 200
        svc.wait_for(lambda: svc.http.get("/v1/events", params={"camera": "live-cam"}).json(), 30, "an event")
        time.sleep(1)
        assert svc.http.patch("/v1/cameras/live-cam", json={"threshold": max(scored) + 100}).status_code == 200
        event = svc.wait_for(lambda: [e for e in svc.http.get("/v1/events", params={"camera": "live-cam"}).json()
                                      if e["clip"]], 30, "the event's clip")[0]
        open_live_page_then_review(svc, browser, event)
    finally:
        svc.http.delete("/v1/cameras/live-cam")
    curve = svc.http.get(f"/v1/cameras/live-cam/events/{event['id']}/scores").json()
    times = [t for t, s in curve["points"] if s is not None]
    # then its curve runs from the pre-roll (1.5 s) over the event to the end of the cooldown after it
    assert event["type"] == "ended" and -1.6 <= times[0] <= -1.0, times[:3]
    assert times[-1] >= event["duration_s"] and times == sorted(times)
    assert -1.6 <= curve["clip_offset_s"] <= 0 and curve["threshold"] == event["threshold"]
    assert np.isfinite([s for _, s in curve["points"] if s is not None]).all()


def open_live_page_then_review(svc, browser, event: dict) -> None:
    """The live page's chart comes from the recent scores even with no WebSocket message at all, and its
    event's "review" link opens the review page on that event, the key carried over."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.route_web_socket("**/v1/cameras/*/ws*", lambda ws: None)  # answered by nobody: never a message
    try:
        page.goto(f"{svc.base}/?api_key={API_KEY}")
        canvas = '.cam[data-camera="live-cam"] canvas'
        # (a line of score pixels; flat at the chart's foot here, as the threshold sits 100 over every score)
        page.wait_for_function(f"() => ({COUNT_COLOUR})(['{canvas}', 0, 51, 102]) > 40", timeout=10_000)
        assert page.evaluate("() => views['live-cam'].points.length") >= 20
        page.locator(f'.cam[data-camera="live-cam"] ul.events li[data-event="{event["id"]}"] a.review').click()
        page.wait_for_function("() => document.querySelector('#detail video').readyState > 0", timeout=10_000)
        assert page.locator("#detail h2").inner_text() == f"live-cam · event {event['id']}"
        assert "api_key" not in page.url and page.locator("select[name=camera]").input_value() == "live-cam"
        assert not errors, errors
    finally:
        page.close()
