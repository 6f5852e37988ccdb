"""The built-in live page (GET /) in headless Chromium against a real server with a streaming camera:
what a person sees, i.e. the camera list, a score chart with points and the threshold line, the heatmap
overlay and the recent-events area. Uses the system Chromium through Playwright (never `playwright install`)."""

from __future__ import annotations

import pytest

from tests.support.servers import API_KEY

pytestmark = pytest.mark.integration
# pixels of a canvas close to an RGB colour (the chart's strokes are anti-aliased)
COUNT_COLOUR = """([sel, r, g, b]) => {
  const c = document.querySelector(sel);
  if (c === null) return 0;  // not drawn yet: polled again, not an error that ends the wait
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (d[i + 3] > 200 && Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) < 60) n++;
  return n;
}"""


def test_live_page_shows_the_camera_chart_heatmap_and_events(service, sample_mp4, browser, tmp_path):
    # given a camera streaming a looping clip
    r = service.http.post("/v1/cameras", json={"id": "page-cam", "url": sample_mp4.as_uri()})
    assert r.status_code == 201, r.text
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        # when a person opens the page with the API key
        page.goto(f"{service.base}/?api_key={API_KEY}")
        cam = page.locator('.cam[data-camera="page-cam"]')
        # then the camera list shows the camera and its state
        cam.wait_for(timeout=10_000)
        assert cam.locator("h2").inner_text() == "page-cam"
        # which model scores this camera
        assert cam.locator(".model").inner_text() == service.http.get("/v1/cameras/page-cam").json()["model"]
        page.wait_for_function("() => /live|warming_up/.test("
                               "document.querySelector('.cam[data-camera=\"page-cam\"] .state').textContent)",
                               timeout=15_000)
        # the heatmap overlay loads as an image
        page.wait_for_function("() => document.querySelector('.cam[data-camera=\"page-cam\"] img.heat')"
                               ".naturalWidth > 0", timeout=20_000)
        # the score chart draws scored points (blue line) and the dashed red threshold line
        canvas = '.cam[data-camera="page-cam"] canvas'
        page.wait_for_function(f"() => ({COUNT_COLOUR})(['{canvas}', 0, 51, 102]) > 100", timeout=20_000)
        assert page.evaluate(COUNT_COLOUR, [canvas, 221, 0, 0]) > 100
        score = cam.locator(".score").inner_text()
        assert score == "warming up" or float(score) == pytest.approx(float(score))
        threshold = service.http.get("/v1/cameras/page-cam").json()["threshold"]
        assert cam.locator(".threshold").inner_text() == f"{threshold:.2f}"
        # the recent events area is there: events from the REST list, or a "none yet" line
        assert cam.locator("ul.events").count() == 1
        page.wait_for_function("() => document.querySelector('.cam[data-camera=\"page-cam\"] ul.events')"
                               ".children.length > 0", timeout=5_000)
        assert page.locator("#status").inner_text() == "1 camera(s)"
        shot = tmp_path / "live.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        assert not errors, errors
    finally:
        page.close()
        service.http.delete("/v1/cameras/page-cam")


def test_api_docs_render_without_internet(service, browser):
    # given no internet (this machine has none), Swagger UI still renders the API from our own assets
    page = browser.new_page()
    try:
        page.goto(f"{service.base}/docs")
        title = page.locator(".swagger-ui .info .title")
        title.wait_for(timeout=15000)
        assert "amvad" in title.inner_text()
        assert page.locator(".opblock-summary-path", has_text="/v1/clips").count() >= 1
    finally:
        page.close()
