"""End to end: a real `amvad serve` (bundled ped2 model) reads a looping RTSP stream of Ped2 frames that
turns anomalous (a cyclist); real Prometheus and Alertmanager (1 s intervals) scrape it with the shipped
rules and routing; a local webhook must receive the firing score alert with the camera label within the
rule's `for` + 5 s of the score crossing the threshold, and the resolved alert once the loop is back to
normal frames. Only the durations, addresses and the webhook URL differ from the shipped files."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.support.deploy import DEPLOY, RULES, binary, load_yaml
from tests.support.servers import RtspServer, free_port, rtsp_available, start_service, stop_process, ws_url
from tests.support.synthetic import PED2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAMERA = "gate"
FOR_S = 2  # the score alert's `for` in this test (shipped: 10s)
# Ped2 test clip 02: frames 95..179 show a cyclist. The loop: 6.5 s normal, 8.5 s anomalous at 10 fps.
NORMAL, ANOMALOUS = range(30, 95), range(95, 180)


def exported_threshold(metrics: str, camera: str) -> float | None:
    """vad_anomaly_threshold{camera=...} from a /metrics page (what the score alert compares with)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "vad_anomaly_threshold" and sample.labels.get("camera") == camera:
                return sample.value
    return None


def e2e_rules(tmp: Path) -> Path:
    """The shipped rules with the score alert's `for` shortened to FOR_S."""
    groups = load_yaml(RULES)["groups"]
    score_rule = next(r for g in groups for r in g["rules"] if r.get("alert") == "AmvadAnomalyScoreHigh")
    score_rule["for"] = f"{FOR_S}s"
    path = tmp / "amvad.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def prometheus_config(tmp: Path, rules: Path, amvad_port: int, am_port: int) -> Path:
    cfg = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(rules)]
    cfg["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    jobs["amvad"]["static_configs"] = [{"targets": [f"127.0.0.1:{amvad_port}"]}]
    cfg["scrape_configs"] = [jobs["amvad"]]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def alertmanager_config(tmp: Path, webhook: str) -> Path:
    cfg = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")

    def shorten(route: dict) -> None:
        route.update(group_wait="0s", group_interval="1s", repeat_interval="1h")
        for sub in route.get("routes", []):
            shorten(sub)
    shorten(cfg["route"])
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Webhook:
    """Alertmanager webhook receiver on 127.0.0.1: keeps (arrival time, payload)."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.received.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                """Keep the test output free of one access-log line per webhook call."""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, status: str, after: float = 0.0) -> tuple[float, dict] | None:
        """The first score alert for CAMERA with this status that arrived after `after`."""
        for t, payload in list(self.received):
            for alert in payload["alerts"]:
                if (t > after and alert["status"] == status and alert["labels"].get("camera") == CAMERA
                        and alert["labels"].get("alertname") == "AmvadAnomalyScoreHigh"):
                    return t, alert
        return None


class ScoreRecorder:
    """Reads the camera's WebSocket in a thread: (arrival time, score) of every scored frame."""

    def __init__(self, url: str) -> None:
        self.scores: list[tuple[float, float]] = []
        self.stop, self.error = threading.Event(), None
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()

    def _run(self, url: str) -> None:
        try:
            with connect(url) as ws:
                while not self.stop.is_set():
                    try:
                        msg = json.loads(ws.recv(timeout=1))
                    except TimeoutError:
                        continue
                    if msg["score"] is not None:
                        self.scores.append((time.time(), msg["score"]))
        except Exception as exc:  # reported by the test's assertion messages
            self.error = exc

    def last_crossing(self, threshold: float, before: float) -> float | None:
        """Arrival time of the last below-to-above crossing before `before`."""
        crossing, prev = None, None
        for t, s in self.scores:
            if t > before:
                break
            if s > threshold and (prev is None or prev <= threshold):
                crossing = t
            prev = s
        return crossing

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url} exited with {proc.returncode}:\n{log.read_text()}"
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout} s:\n{log.read_text()}")


def anomalous_loop(folder: Path) -> Path:
    """000.jpg.. : normal Ped2 frames, then the cyclist; the RTSP server loops it."""
    src = PED2 / "testing" / "frames" / "02"
    folder.mkdir()
    for i, n in enumerate([*NORMAL, *ANOMALOUS]):
        (folder / f"{i:03d}.jpg").symlink_to(src / f"{n:03d}.jpg")
    return folder


def test_webhook_gets_firing_then_resolved_score_alert(tmp_path):
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager")
    reason = rtsp_available()
    if reason:
        pytest.skip(reason)
    if not (PED2 / "testing" / "frames" / "02").is_dir():
        pytest.skip(f"UCSD Ped2 not found at {PED2}")
    t_start = time.time()
    rules = e2e_rules(tmp_path)
    hook = Webhook()
    server = RtspServer(anomalous_loop(tmp_path / "frames"), fps=10)
    procs: list[subprocess.Popen] = []
    svc = recorder = None
    try:
        server.start()
        svc = start_service(tmp_path, "ped2", {"cameras": [{"id": CAMERA, "url": server.url}]})
        # the camera has no override: the gauge the alert compares with is the model's threshold
        model_threshold = svc.http.get("/readyz").json()["threshold"]
        threshold = exported_threshold(svc.http.get("/metrics").text, CAMERA)
        assert threshold is not None and abs(threshold - model_threshold) < 1e-6, (threshold, model_threshold)
        recorder = ScoreRecorder(ws_url(svc, CAMERA))
        am_port, prom_port = free_port(), free_port()
        am_log, prom_log = tmp_path / "alertmanager.log", tmp_path / "prometheus.log"
        procs.append(start([alertmanager, f"--config.file={alertmanager_config(tmp_path, hook.url)}",
                            f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                            "--cluster.listen-address="], am_log))
        procs.append(start([prometheus, f"--config.file={prometheus_config(tmp_path, rules, svc.port, am_port)}",
                            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{prom_port}", "--rules.alert.resend-delay=1s"],
                           prom_log))
        wait_ready(f"http://127.0.0.1:{am_port}/-/ready", procs[0], am_log)
        wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", procs[1], prom_log)

        def logs() -> str:
            return (f"websocket error: {recorder.error}\n"
                    f"scores: {[round(s, 2) for _, s in recorder.scores[-80:]]}\nwebhook: {hook.received}\n"
                    f"prometheus:\n{prom_log.read_text()[-2000:]}\nalertmanager:\n{am_log.read_text()[-2000:]}")

        # when the stream reaches the cyclist, then a firing alert for the camera arrives in time
        fired = svc.wait_for(lambda: hook.first("firing"), 50, f"the firing alert\n{logs()}")
        t_fire, alert = fired
        crossing = recorder.last_crossing(threshold, t_fire)
        assert crossing is not None, f"alert fired but the score never crossed {threshold}\n{logs()}"
        delay = t_fire - crossing
        print(f"score crossed {threshold} -> firing webhook after {delay:.1f} s (for: {FOR_S}s)")
        assert delay <= FOR_S + 5, f"firing after {delay:.1f} s\n{logs()}"
        assert alert["labels"]["severity"] == "warning" and alert["annotations"]["summary"].endswith(CAMERA)
        # when the loop is back on normal frames, then the resolved alert arrives
        t_res, _ = svc.wait_for(lambda: hook.first("resolved", after=t_fire), 25, f"the resolved alert\n{logs()}")
        below = [t for t, s in recorder.scores if t_fire < t < t_res and s <= threshold]
        assert below, f"resolved although the score never fell below {threshold}\n{logs()}"
        print(f"score fell below {threshold} -> resolved webhook after {t_res - below[0]:.1f} s; "
              f"test took {time.time() - t_start:.0f} s")
    finally:
        if recorder is not None:
            recorder.close()
        for proc in procs:
            stop_process(proc)
        if svc is not None:
            svc.http.close()
            stop_process(svc.proc)
        server.stop()
        hook.server.shutdown()
