"""``amvad bench --soak-minutes``: a short soak of two live cameras with events, clips and a webhook on."""

from __future__ import annotations

from amvad.cli.soak import run_soak
from tests.support.model_files import with_metadata


def test_soak_reports_memory_over_time_drops_latency_and_events(tiny_model, sample_mp4, tmp_path):
    # given the tiny model with a threshold every frame crosses, so events (and clips, webhooks) happen
    model = with_metadata(tiny_model, tmp_path / "alarming.onnx", threshold=-1e6)
    rep = run_soak(str(model), source=sample_mp4, cameras=2, rate=10, minutes=0.25, sample_s=2, progress=False)
    assert rep["cameras"] == 2 and rep["frames_published"] >= 2 * 10 * 10
    assert rep["dropped_frames"] == 0 and rep["latency_ms"]["n"] > 0
    assert rep["events"] >= 2 and rep["webhooks_received"] >= 2
    samples = rep["rss_mb"]["samples"]
    assert len(samples) >= 5 and all(m > 50 for _, m in samples)
    assert rep["rss_mb"]["growth_after_warmup_pct"] is not None and rep["faults"] == {}
