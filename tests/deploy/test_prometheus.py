"""The shipped Prometheus config, rules and their unit tests, and the Alertmanager config, through the
real tools (promtool, amtool from the Debian packages)."""

from __future__ import annotations

from tests.support.deploy import DEPLOY, RULES, binary, load_yaml, run_tool

PROM = DEPLOY / "prometheus"
ALERTS = {"AmvadAnomalyScoreHigh", "AmvadCameraDown", "AmvadCameraStalled", "AmvadFramesDropping",
          "AmvadServiceDown", "AmvadCameraDegraded", "AmvadEventStoreDown", "AmvadCameraTampered",
          "AmvadSceneChangesFrequent", "AmvadCameraPictureSoft", "AmvadCameraPictureNoisy"}


def test_promtool_checks_config_and_rules():
    promtool = binary("promtool")
    out = run_tool([promtool, "check", "config", str(PROM / "prometheus.yml")])
    assert "1 rule files found" in out  # the config really loads the shipped rules
    out = run_tool([promtool, "check", "rules", str(RULES)])
    assert f"{len(ALERTS)} rules found" in out


def test_rule_unit_tests_pass_and_cover_every_rule_firing_and_not():
    promtool = binary("promtool")
    groups = load_yaml(RULES)["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert alerts == ALERTS
    # no hard-coded threshold: the score alert compares each camera with its exported threshold
    score = next(r for g in groups for r in g["rules"] if r.get("alert") == "AmvadAnomalyScoreHigh")
    assert "vad_anomaly_threshold" in score["expr"] and "camera" in score["expr"]
    assert not any("vector(" in r["expr"] for g in groups for r in g["rules"])
    tests = [t for path in sorted((PROM / "tests").glob("*.yml")) for t in load_yaml(path)["tests"]]
    firing, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
        if any(c["alertname"] == "AmvadAnomalyScoreHigh" for c in t.get("alert_rule_test", [])):
            inputs = " ".join(i["series"] for i in t["input_series"])
            assert "vad_anomaly_threshold{" in inputs, "the score alert's tests need the threshold gauge"
    assert firing == alerts and quiet == alerts, f"missing firing {alerts - firing}, not firing {alerts - quiet}"
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    tested = {c["expr"] for t in tests for c in t.get("promql_expr_test", [])}
    assert recorded <= tested
    for path in sorted((PROM / "tests").glob("*.yml")):
        out = run_tool([promtool, "test", "rules", path.name], cwd=path.parent)
        assert "SUCCESS" in out


def test_alertmanager_routes_to_webhook_grouped_per_camera():
    amtool = binary("amtool")
    path = DEPLOY / "alertmanager" / "alertmanager.yml"
    run_tool([amtool, "check-config", str(path)])
    cfg = load_yaml(path)
    route = cfg["route"]
    assert "camera" in route["group_by"] and route["repeat_interval"]
    hooks = [h for r in cfg["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks and all(h["send_resolved"] for h in hooks)
    # a score alert for one camera goes to the webhook receiver
    out = run_tool([amtool, "config", "routes", "test", f"--config.file={path}",
                    "alertname=AmvadAnomalyScoreHigh", "camera=gate", "severity=warning"])
    assert "amvad-webhook" in out
