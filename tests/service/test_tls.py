"""HTTPS and WSS with the certificate ``amvad tls self-signed`` makes, against a real ``amvad serve`` given
``tls_cert``/``tls_key``: Python clients that trust that certificate (and only it) talk to the API and the
score stream; in Chromium a viewer made with ``amvad user add`` is sent to the login page, logs in, watches
the live page's scores arrive over WSS, reviews the events (clip, curve, feedback) and logs out; the session
cookie is Secure, HttpOnly and SameSite=Lax. The browser context ignores certificate errors, as a person
accepts a self-signed certificate once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.service.test_live_page import COUNT_COLOUR
from tests.service.test_review_page import seed
from tests.support.servers import API_KEY, REPO, running_service

pytestmark = pytest.mark.integration
PASSWORD = "vic-password-1"


def amvad(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "amvad.cli", *args], check=False, cwd=REPO, input=stdin, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def world(tiny_model, sample_mp4, tmp_path_factory):
    """A service over TLS with five stored events, a viewer ``vic`` and a streaming camera ``tls-cam``."""
    tmp = tmp_path_factory.mktemp("tls")
    made = json.loads(amvad("tls", "self-signed", "--out", str(tmp / "tls"), "--host", "127.0.0.1").stdout)
    events = seed(tmp / "state")
    amvad("user", "add", "vic", "--role", "viewer", "--password-stdin", "--state-dir", str(tmp / "state"),
          stdin=PASSWORD + "\n")
    with running_service(tmp, tiny_model, {"tls_cert": made["cert"], "tls_key": made["key"]}) as svc:
        r = svc.http.post("/v1/cameras", json={"id": "tls-cam", "url": sample_mp4.as_uri(), "threshold": 1e6})
        assert r.status_code == 201, r.text  # (a threshold nothing reaches: no event joins the seeded five)
        yield svc, events


def test_the_api_and_the_score_stream_speak_tls_with_that_certificate(world):
    svc, _ = world
    assert svc.base.startswith("https://") and svc.http.get("/readyz").json()["status"] == "ready"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{svc.base}/healthz")  # the system's CAs do not know it: it is TLS, and not a public CA's
    messages = asyncio.run(asyncio.wait_for(first_messages(svc, 3), timeout=60))
    assert [m["camera"] for m in messages] == ["tls-cam"] * 3 and messages[1]["frame_id"] > messages[0]["frame_id"]


async def first_messages(svc, n: int) -> list[dict]:
    """The first ``n`` messages of the score stream over WSS. The asyncio client, not the threaded one: the
    threaded client reads the TLS socket in one thread while it sends the handshake from another, and
    Python's TLS sockets are not safe for that (once in a while the handshake response never arrives)."""
    url = f"wss://127.0.0.1:{svc.port}/v1/cameras/tls-cam/ws"
    async with connect(url, ssl=svc.ssl, additional_headers={"X-API-Key": API_KEY}, open_timeout=30) as ws:
        return [json.loads(await ws.recv()) for _ in range(n)]


def test_a_viewer_logs_in_and_uses_the_live_and_review_pages_over_https(world, browser, tmp_path):
    svc, events = world
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        # when a person opens the live page without a key, they are sent to log in
        page.goto(f"{svc.base}/")
        page.wait_for_url(f"{svc.base}/login?next=%2F")
        page.fill("input[name=name]", "vic")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        # then, logged in, they are back on the live page, whose scores arrive over WSS
        page.wait_for_url(f"{svc.base}/")
        cam = page.locator('.cam[data-camera="tls-cam"]')
        cam.wait_for(timeout=15_000)
        page.wait_for_function("() => views['tls-cam'] && views['tls-cam'].firstId !== undefined",
                               timeout=30_000)  # set by the first WebSocket message
        assert page.evaluate("() => views['tls-cam'].ws.url").startswith("wss://127.0.0.1:")
        canvas = '.cam[data-camera="tls-cam"] canvas'
        page.wait_for_function(f"() => ({COUNT_COLOUR})(['{canvas}', 0, 51, 102]) > 100", timeout=30_000)
        assert page.locator("#me").inner_text().startswith("vic (viewer)")
        assert cam.locator("button.arm").is_disabled()  # a viewer cannot disarm
        session = next(c for c in context.cookies() if c["name"] == "amvad_session")
        assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Lax"
        page.screenshot(path=str(tmp_path / "live-https.png"), full_page=True)
        # and the review page lists the events, plays a clip with its curve and takes their feedback
        page.click("#review-link")
        rows = "#events tbody tr"
        page.wait_for_function(f"() => document.querySelectorAll('{rows}').length === 5", timeout=15_000)
        assert page.url.startswith(f"{svc.base}/review")
        page.locator(rows).first.click()
        page.wait_for_function("() => document.querySelector('#detail video').readyState > 0", timeout=15_000)
        page.wait_for_function(f"() => ({COUNT_COLOUR})(['#detail canvas', 0, 51, 102]) > 100", timeout=10_000)
        page.locator("#detail .feedback button[data-label=normal]").click()
        feedback = f'{rows}[data-event="{events[0]["id"]}"] td.feedback'
        page.wait_for_function(f"() => document.querySelector('{feedback}').textContent === 'false alarm'",
                               timeout=10_000)
        page.screenshot(path=str(tmp_path / "review-https.png"), full_page=True)
        print(f"screenshots: {tmp_path}")
        assert not errors, errors
        # when they log out, the pages send them to the login page again
        page.goto(f"{svc.base}/")
        page.locator("#me button").click()
        page.wait_for_url(f"{svc.base}/login")
        page.goto(f"{svc.base}/review")
        page.wait_for_url(f"{svc.base}/login?next=%2Freview")
    finally:
        context.close()
    assert svc.http.get(f"/v1/cameras/gate/events/{events[0]['id']}").json()["feedback"] == "normal"


def test_serve_with_a_pair_that_does_not_load_exits_1_with_one_line(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    cmd = [sys.executable, "-m", "amvad.cli", "serve", "--port", "0", "--tls-cert", str(tmp_path / "cert.pem"),
           "--tls-key", str(tmp_path / "key.pem")]
    res = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO), "AMVAD_STATE_DIR": str(tmp_path / "state")})
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "cannot use the TLS certificate" in res.stderr
    res = subprocess.run(cmd[:-2], check=False, cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO), "AMVAD_STATE_DIR": str(tmp_path / "state")})
    assert res.returncode == 2 and "tls_cert and tls_key go together" in res.stderr, res.stderr
