from __future__ import annotations

from amvad.training.speed import measure


def test_speed_measures_real_export_and_flow():
    res = measure("comemory", height=32, width=48, base_width=4, clip_len=4, repeats=2, threads=1,
                  flow={"name": "tvl1", "levels": 2, "warps": 1, "iterations": 3})
    assert res["model_ms"] > 0 and res["flow_ms"] > 0 and res["params"] > 0
    assert res["onnx_bytes"] > res["params"] * 4 * 0.9  # float32 weights are in the file
    assert res["flow"]["iterations"] == 3
