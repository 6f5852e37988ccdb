"""Grafana provisioning (datasource, dashboard provider, alert rule, contact point) and the dashboard
JSON: structure, datasource references, and every PromQL expression parsed by promtool."""

from __future__ import annotations

import json
import re

from tests.support.deploy import DEPLOY, check_promql, load_yaml

GRAFANA = DEPLOY / "grafana"
METRICS = ("vad_anomaly_score", "vad_anomaly_threshold", "vad_frames_total", "vad_frames_dropped_total",
           "vad_camera_reconnects_total", "vad_stage_seconds_bucket", "vad_ws_clients", "vad_anomaly_events_total",
           "vad_frame_latency_seconds_bucket", "vad_batch_size_sum", "vad_camera_tampered", "vad_camera_events_total",
           "vad_camera_sharpness_ratio", "vad_camera_noise_ratio")


def datasource_uid() -> str:
    (ds,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    return ds["uid"]


def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "amvad.json").read_text())


def as_promql(expr: str) -> str:
    """Grafana's variables to values PromQL accepts."""
    return expr.replace("$__rate_interval", "1m").replace("$camera", ".*")


def test_dashboard_provider_points_at_the_mounted_dashboards():
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "amvad.yml")["providers"]
    compose = load_yaml(DEPLOY / "compose.yaml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_dashboard_panels_variable_annotations_and_datasources(tmp_path):
    uid, dash = datasource_uid(), dashboard()
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    (var,) = dash["templating"]["list"]
    assert var["name"] == "camera" and var["datasource"]["uid"] == uid
    metric = re.fullmatch(r"label_values\((\w+), camera\)", var["query"]["query"]).group(1)
    exprs = {"variable camera": metric}
    for p in panels:
        assert p["datasource"]["uid"] == uid, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid
            exprs[f"panel {p['title']!r} {t['refId']}"] = as_promql(t["expr"])
    for a in dash["annotations"]["list"]:
        assert a["datasource"]["uid"] == uid
        exprs[f"annotation {a['name']!r}"] = as_promql(a["expr"])
    joined = " ".join(exprs.values())
    for m in METRICS:
        assert m in joined, f"dashboard shows no {m}"
    # the score panel draws the alert threshold, the per-camera panels follow the variable
    score = next(p for p in panels if p["title"] == "Anomaly score")
    assert any(t["expr"] == 'vad_anomaly_threshold{camera=~"$camera"}' for t in score["targets"])
    # no constant threshold step: the line is each camera's exported threshold
    assert {s["value"] for s in score["fieldConfig"]["defaults"]["thresholds"]["steps"]} == {None}
    # engine-wide series (stage times, frame latency, batch sizes) have no camera label; the rest follow it
    engine_wide = ("vad_stage", "vad_frame_latency", "vad_batch_size")
    assert all('camera=~"$camera"' in t["expr"] for p in panels for t in p["targets"]
               if not any(m in t["expr"] for m in engine_wide))
    check_promql(exprs, tmp_path)


def test_grafana_alert_rule_contact_point_and_promql(tmp_path):
    uid = datasource_uid()
    cfg = load_yaml(GRAFANA / "provisioning" / "alerting" / "amvad.yml")
    assert cfg["apiVersion"] == 1
    (contact,) = cfg["contactPoints"]
    (receiver,) = contact["receivers"]
    assert receiver["type"] == "webhook" and receiver["settings"]["url"].startswith("http")
    (policy,) = cfg["policies"]
    assert policy["receiver"] == contact["name"] and "camera" in policy["group_by"]
    (group,) = cfg["groups"]
    (rule,) = group["rules"]
    refs = {d["refId"]: d for d in rule["data"]}
    assert rule["condition"] in refs
    exprs = {}
    for ref, d in refs.items():
        if d["datasourceUid"] == "__expr__":  # server-side expressions point at other refIds
            assert d["model"]["expression"] in refs, ref
        else:
            assert d["datasourceUid"] == uid
            exprs[f"alert {rule['title']!r} {ref}"] = d["model"]["expr"]
    assert exprs
    # per camera: the query is the margin score - threshold, the condition "above 0" (no constant)
    condition = refs[rule["condition"]]["model"]
    (expr,) = exprs.values()
    assert "vad_anomaly_score - on(instance, camera) vad_anomaly_threshold" in expr
    assert condition["conditions"][0]["evaluator"] == {"type": "gt", "params": [0]}
    assert rule["annotations"]["__dashboardUid__"] == dashboard()["uid"]
    check_promql(exprs, tmp_path)
