"""Target: live cameras keep real time while a fit runs in the service. Two file cameras at 5 frames/s on
the bundled model lose at most 2 % of their frames while ``POST /v1/models/fit`` trains a full-size model
(128x192-class input, base width 12) beside them in its own process."""

from __future__ import annotations

import pytest

from amvad.service.config import SAMPLES_DIR
from tests.support.servers import running_service
from tests.support.synthetic import render_clip, write_mp4

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_cameras_at_5_fps_drop_at_most_2_percent_during_a_fit(tmp_path):
    footage = write_mp4(tmp_path / "normal.mp4", render_clip(400, speed=1.0, seed=4))
    with running_service(tmp_path, "ped2", {"media_dirs": [str(tmp_path), str(SAMPLES_DIR)]}) as svc:
        sample = (SAMPLES_DIR / "ped2_test01.mp4").as_uri()
        for cam in ("left", "right"):
            r = svc.http.post("/v1/cameras", json={"id": cam, "url": sample, "replay_fps": 5})
            assert r.status_code == 201, r.text
        svc.wait_for(lambda: all(svc.http.get(f"/v1/cameras/{c}").json()["state"] == "live"
                                 for c in ("left", "right")), 30, "both cameras live")
        before = {c: svc.http.get(f"/v1/cameras/{c}").json() for c in ("left", "right")}
        job = svc.http.post("/v1/models/fit", json={"name": "beside", "footage": [footage.as_uri()], "minutes": 0.5})
        assert job.status_code == 202, job.text
        result = svc.wait_for(lambda: (lambda j: j if j["state"] != "running" else None)(
            svc.http.get(f"/v1/models/fit/{job.json()['id']}").json()), 400, "the fit", interval=1)
        assert result["state"] == "done", result
        after = {c: svc.http.get(f"/v1/cameras/{c}").json() for c in ("left", "right")}
        frames = sum(after[c]["frames"] - before[c]["frames"] for c in after)
        drops = sum(after[c]["drops"] - before[c]["drops"] for c in after)
        print(f"during the fit ({result['progress']}): {frames} frames published, {drops} dropped "
              f"({100 * drops / max(frames + drops, 1):.2f} %)")
        assert frames > 100 and drops <= 0.02 * (frames + drops)
