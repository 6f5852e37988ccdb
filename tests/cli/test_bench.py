"""``amvad bench``: the report of the in-process pipeline run, the CLI, and the HTTP mode against a real
``amvad serve``."""

from __future__ import annotations

import json

import pytest

from amvad.cli.bench import http_bench, percentiles, run_bench
from amvad.cli.main import main
from tests.support.servers import API_KEY

STAGES = ("decode", "flow", "model", "score", "heatmap")


def test_in_process_report_covers_every_stage_of_every_frame(tiny_model, sample_mp4):
    # given two cameras replaying a 30-frame clip as fast as inference goes, with heatmaps
    rep = run_bench(str(tiny_model), source=sample_mp4, cameras=2, frames=40, device="cpu", progress=False)
    # then each camera got 40 scored frames (the clip loops), each with a heatmap, none dropped
    assert rep["cameras"] == 2 and rep["frames_per_camera"] == 40
    assert rep["heatmaps_sent"] == 80
    assert rep["drops"] == {"queue_full": 0, "ws_slow_client": 0}
    # the loop restarts the window, so warm-up frames recur (at least once per camera)
    assert rep["warmup_frames"] >= 2 * 3
    assert rep["fps_end_to_end"] > 0 and rep["fps_aggregate"] >= rep["fps_end_to_end"] * 0.9
    assert 0 < rep["latency_ms_p50"] <= rep["latency_ms_p99"]
    for stage in STAGES:
        assert rep["stage_ms"][stage]["n"] >= 80, stage
        assert 0 <= rep["stage_ms"][stage]["p50"] <= rep["stage_ms"][stage]["p99"], stage
    assert rep["batch_size"]["model"]["p50"] >= 1
    assert rep["peak_rss_mb"] > 50 and rep["device"] == "cpu"
    eng = rep["engine"]
    assert eng["flow"]["name"] == "tvl1" and eng["model"]["method"] == "amsrc"
    assert "gpu_memory_mb" not in rep


def test_without_heatmaps_no_jpeg_is_made(tiny_model, sample_mp4):
    rep = run_bench(str(tiny_model), source=sample_mp4, frames=10, device="cpu", heatmaps=False, progress=False)
    assert rep["heatmaps_sent"] == 0 and rep["stage_ms"]["heatmap"] is None


def test_paced_replay_keeps_the_rate(tiny_model, sample_mp4):
    # given one camera paced at 20 frames/s (well within what the tiny model does on 2 cores)
    rep = run_bench(str(tiny_model), source=sample_mp4, frames=30, device="cpu", rate=20, progress=False)
    # then frames come out at the source rate, and none is dropped
    assert rep["fps_end_to_end"] == pytest.approx(20, rel=0.25)
    assert rep["drops"]["queue_full"] == 0 and rep["rate_fps"] == 20


def test_percentiles_are_in_milliseconds():
    assert percentiles([]) is None
    p = percentiles([0.001 * i for i in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01) and p["n"] == 100


def test_cli_writes_the_json_report_and_rejects_bad_arguments(tiny_model, sample_mp4, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(tiny_model), "--source", str(sample_mp4), "--frames", "8",
                 "--device", "cpu", "--no-heatmaps", "--quiet", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["frames_per_camera"] == 8 and rep["heatmaps"] is False
    assert main(["bench", "--model", str(tiny_model), "--cameras", "0", "--quiet"]) == 2
    assert "cameras and frames must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--model", str(tiny_model), "--source", str(tmp_path / "none.mp4"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_backends_and_precisions_run_one_after_the_other_side_by_side(tiny_model, sample_mp4, tmp_path):
    out = tmp_path / "compare.json"
    assert main(["bench", "--model", str(tiny_model), "--source", str(sample_mp4), "--frames", "8",
                 "--device", "cpu", "--no-heatmaps", "--quiet", "--backend", "onnxruntime", "openvino",
                 "--precision", "fp32", "bf16", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["args"] == ["--source", str(sample_mp4), "--frames", "8", "--device", "cpu", "--no-heatmaps",
                           "--quiet"]
    rows = {(r["backend"], r["precision_asked"]): r for r in rep["runs"]}
    assert list(rows) == [("onnxruntime", "fp32"), ("onnxruntime", "bf16"), ("openvino", "fp32"),
                          ("openvino", "bf16")]
    assert all(r["fps_end_to_end"] > 0 and r["peak_rss_mb"] > 50 for r in rows.values())
    # the tiny model has no parity record: bf16 is asked for but fp32 runs, and the row says why
    assert rows[("openvino", "bf16")]["precision"] == "fp32" and rows[("openvino", "bf16")]["note"]
    assert rows[("onnxruntime", "bf16")]["precision"] == "fp32"


def test_http_mode_drives_a_running_service(service, sample_mp4):
    # given a running `amvad serve` (tiny model), the bench uploads the clip and adds a file camera
    rep = http_bench(service.base, source=sample_mp4, camera_url=f"file://{sample_mp4}", cameras=2, frames=12,
                     api_key=API_KEY, progress=False)
    up = rep["upload"]
    assert up["frames"] == 30 and up["fps_wall"] > 0 and up["fps_job"] >= up["fps_wall"]
    cams = rep["cameras"]
    # the file camera replays at its own 10 fps; scores arrive at about that rate with heatmaps
    assert cams["cameras"] == 2 and cams["fps_per_camera"] == pytest.approx(10, rel=0.3)
    assert cams["heatmaps_sent"] == 24 and cams["latency_ms"]["p50"] > 0
    # and the bench removed its cameras again
    assert all(not c["id"].startswith("bench-") for c in service.http.get("/v1/cameras").json())


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_cuda_engine_batches_cameras_and_reports_gpu_memory(tiny_model, sample_mp4):
    rep = run_bench(str(tiny_model), source=sample_mp4, cameras=4, frames=20, device="cuda", progress=False)
    assert rep["device"].startswith("cuda") and rep["drops"]["queue_full"] == 0
    assert rep["gpu_memory_mb"]["per_camera"] > 0 and rep["heatmaps_sent"] == 80
    assert "CUDAExecutionProvider" in rep["engine"]["providers"]
