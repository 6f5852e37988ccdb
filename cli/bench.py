"""``amvad bench``: throughput, latency and memory of the real service pipeline.

In process (default): the service is built by its own wiring (:class:`~service.wiring.Services`, as
``amvad serve`` builds it) and N cameras replay a video file through the real ingest (PyAV decode), the
shared :class:`~runtime.engine.InferenceEngine` (flow + model, batched across cameras), causal scoring,
events and the WebSocket broadcaster, each with one subscriber that asks for heatmaps, so every scored
frame is also rendered as a JPEG overlay and sent as JSON, as users get it.
Only the network is left out. ``rate=0`` replays as fast as inference goes (throughput; no frame is
dropped); ``rate>0`` replays like a live camera at that frame rate, dropping the oldest frame when
inference falls behind (drops are counted). Latency is frame decoded -> message ready for the client.

Over HTTP (``http_bench``): drives a running ``amvad serve`` through its public API: a clip upload
scored to the end, and N cameras added with a source URL and read over WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amvad.runtime.engine import EngineConfig
from amvad.service.cameras import Camera
from amvad.service.config import CameraConfig, ServiceSettings, WebSocketConfig
from amvad.service.metrics import Metrics
from amvad.service.wiring import Services

SAMPLE = Path(__file__).resolve().parents[1] / "service" / "samples" / "ped2_test01.mp4"


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float] | None:
    """p50/p99/mean of seconds, in milliseconds (None when there are none)."""
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64) * scale
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "mean": round(float(a.mean()), 2), "n": int(a.size)}


class Progress:
    """One status line on stderr, rewritten at most once a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self._last = enabled and sys.stderr is not None, 0.0

    def show(self, text: str, force: bool = False) -> None:
        if self.enabled and (force or time.monotonic() - self._last >= 1.0):
            self._last = time.monotonic()
            sys.stderr.write(f"\r[bench] {text}   ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class _Tally:
    """Scored messages of one camera as the subscriber received them."""

    def __init__(self) -> None:
        self.times: list[float] = []      # perf_counter at receipt
        self.latency: list[float] = []    # wall seconds from decode to receipt
        self.heatmaps = 0
        self.warmup = 0

    def record(self, msg: dict) -> None:
        """One WebSocket message (JSON already parsed): warm-up frames are counted apart."""
        if msg.get("score") is None:
            self.warmup += 1
            return
        self.times.append(time.perf_counter())
        self.latency.append(time.time() - msg["timestamp"])
        self.heatmaps += "heatmap" in msg

    def fps(self, frames: int) -> float:
        """Scored frames per second over the first ``frames`` scored frames."""
        return (frames - 1) / max(self.times[frames - 1] - self.times[0], 1e-9)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux: KiB


def run_bench(model: str = "ped2", *, source: str | Path | None = None, cameras: int = 1, frames: int = 300,
              device: str = "auto", rate: float = 0.0, heatmaps: bool = True, max_batch: int | None = None,
              batch_wait_ms: float | None = None, flow_threads: int | None = None,
              model_threads: int | None = None, backend: str = "auto", precision: str = "auto",
              timeout_s: float | None = None, progress: bool = True) -> dict:
    """Run ``cameras`` streams of ``source`` until each has ``frames`` scored frames; return the report."""
    if cameras < 1 or frames < 1:
        raise ValueError(f"cameras and frames must be >= 1, got {cameras} and {frames}")
    if rate < 0:
        raise ValueError(f"rate must be >= 0 (0 = as fast as possible), got {rate}")
    src = Path(source) if source else SAMPLE
    if not src.is_file():
        raise FileNotFoundError(f"benchmark source {src} does not exist")
    engine_cfg = EngineConfig(device=device, backend=backend, precision=precision, **{k: v for k, v in {
        "max_batch": max_batch, "batch_wait_ms": batch_wait_ms, "flow_threads": flow_threads,
        "model_threads": model_threads}.items() if v is not None})
    state_dir = tempfile.TemporaryDirectory(prefix="amvad-bench-")
    settings = ServiceSettings(model=model, state_dir=Path(state_dir.name), engine=engine_cfg,
                               websocket=WebSocketConfig(queue=100_000), media_dirs=[src.resolve().parent])
    gpu_free0 = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    if gpu_free0 is not None:
        torch.cuda.reset_peak_memory_stats()
    services = Services(settings, Metrics(keep_samples=True))
    services.start()
    metrics, engine = services.metrics, services.engine
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="bench-loop", daemon=True)
    loop_thread.start()
    cams: list[Camera] = [services.cameras.add(CameraConfig(id=f"bench-{i}", url=f"file://{src.resolve()}",
                                                            replay_fps=rate), start=False)
                          for i in range(cameras)]
    tallies = [_Tally() for _ in cams]
    finished = threading.Event()

    async def subscribe(cam: Camera):
        return cam.broadcaster.subscribe(heatmap=heatmaps)

    async def consume(client, tally: _Tally) -> None:
        while len(tally.times) < frames:
            tally.record(json.loads(await client.queue.get()))
        if all(len(t.times) >= frames for t in tallies):
            finished.set()

    clients = [asyncio.run_coroutine_threadsafe(subscribe(c), loop).result() for c in cams]
    for client, tally in zip(clients, tallies):
        asyncio.run_coroutine_threadsafe(consume(client, tally), loop)
    bar = Progress(progress)
    wall0 = time.perf_counter()
    for cam in cams:
        cam.start()
    limit = timeout_s or max(120.0, 3 * frames / max(rate, 1.0) + 60)
    try:
        while not finished.wait(0.25):
            done = sum(min(len(t.times), frames) for t in tallies)
            elapsed = time.perf_counter() - wall0
            bar.show(f"{done}/{frames * cameras} frames scored, {done / max(elapsed, 1e-9):.1f} frames/s, "
                     f"drops {sum(c.drops for c in cams)}")
            if elapsed > limit:
                raise TimeoutError(f"benchmark did not finish in {limit:.0f} s "
                                   f"({done}/{frames * cameras} frames scored)")
        bar.show(f"{frames * cameras}/{frames * cameras} frames scored", force=True)
    finally:
        bar.done()
        services.stop()
        loop.call_soon_threadsafe(loop.stop)
        state_dir.cleanup()

    # throughput over the scored frames of all cameras, from the first to the last
    first = min(t.times[0] for t in tallies)
    last = max(t.times[frames - 1] for t in tallies)
    per_cam = [t.fps(frames) for t in tallies]
    s = metrics.samples or {}
    latency = percentiles([x for t in tallies for x in t.latency])
    report: dict[str, Any] = {
        "cameras": cameras, "frames_per_camera": frames, "rate_fps": rate or None, "heatmaps": heatmaps,
        "source": str(src), "fps_end_to_end": round(float(np.mean(per_cam)), 2),
        "fps_aggregate": round((frames * cameras - 1) / max(last - first, 1e-9), 2),
        "latency_ms_p50": latency["p50"], "latency_ms_p99": latency["p99"], "latency_ms": latency,
        "stage_ms": {k: percentiles(s.get(k, [])) for k in ("decode", "flow", "model", "score", "heatmap",
                                                             "engine_latency")},
        "batch_size": {stage: percentiles(s.get(f"{stage}_batch_size", []), scale=1.0) for stage in ("flow", "model")},
        "drops": {"queue_full": sum(c.drops for c in cams), "ws_slow_client": sum(c.dropped for c in clients)},
        "heatmaps_sent": sum(t.heatmaps for t in tallies), "warmup_frames": sum(t.warmup for t in tallies),
        "peak_rss_mb": _peak_rss_mb(), "device": str(engine.device), "backend": engine.model.backend.name,
        "precision": engine.model.precision.used, "engine": engine.describe(),
        "seconds": round(time.perf_counter() - wall0, 2), "date": time.strftime("%Y-%m-%d"),
    }
    if engine.device.type == "cuda":
        used = (gpu_free0 - torch.cuda.mem_get_info()[0]) / 2**20
        report["gpu_memory_mb"] = {"process_used": round(used, 1), "per_camera": round(used / cameras, 1),
                                   "torch_peak": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return report


def compare(model: str, backends: list[str], precisions: list[str], argv: list[str]) -> dict:
    """``amvad bench`` for every backend x precision, one after the other on this machine, each in a fresh
    process (so each run's peak RSS and warm-up are its own), and a table of them side by side. ``argv``:
    the other bench arguments, passed on. A precision the model may not run (no passing parity record, not
    native) runs at fp32, and its row says so."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="amvad-compare-") as tmp:
        for backend in backends:
            for precision in precisions:
                out = Path(tmp) / f"{backend}-{precision}.json"
                subprocess.run([sys.executable, "-m", "amvad.cli", "bench", "--model", model, "--backend", backend,
                                "--precision", precision, "--json", str(out), *argv],
                               check=True, stdout=subprocess.DEVNULL)
                report = json.loads(out.read_text())
                stage = report["stage_ms"]
                runs.append({"backend": backend, "precision_asked": precision, "precision": report["precision"],
                             "fps_end_to_end": report["fps_end_to_end"], "fps_aggregate": report["fps_aggregate"],
                             "latency_ms_p50": report["latency_ms_p50"], "latency_ms_p99": report["latency_ms_p99"],
                             "flow_ms_p50": (stage["flow"] or {}).get("p50"),
                             "model_ms_p50": (stage["model"] or {}).get("p50"),
                             "drops": report["drops"]["queue_full"], "peak_rss_mb": report["peak_rss_mb"],
                             "note": report["engine"]["precision_note"]})
    return {"model": model, "date": time.strftime("%Y-%m-%d"), "args": argv, "runs": runs}


def http_bench(url: str, *, source: str | Path | None = None, camera_url: str | None = None, cameras: int = 1,
               frames: int = 100, api_key: str | None = None, timeout_s: float = 600.0,
               progress: bool = True) -> dict:
    """What users of a running service see: a clip upload scored to the end and, with ``camera_url``,
    ``cameras`` cameras of that source read over WebSocket until each has ``frames`` scored frames."""
    import httpx
    src = Path(source) if source else SAMPLE
    if not src.is_file():
        raise FileNotFoundError(f"benchmark source {src} does not exist")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    bar = Progress(progress)
    report: dict[str, Any] = {"url": url, "source": str(src), "date": time.strftime("%Y-%m-%d")}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        http.get("/readyz").raise_for_status()
        t0 = time.perf_counter()
        with src.open("rb") as fh:
            r = http.post("/v1/clips", params={"heatmaps": "true"}, files={"file": (src.name, fh, "video/mp4")})
        r.raise_for_status()
        job = r.json()
        while job["status"] in ("queued", "running"):
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"clip job {job['id']} did not finish in {timeout_s:.0f} s")
            bar.show(f"upload: {job['progress'] * 100:.0f}% of {job['frames']} frames")
            time.sleep(0.2)
            job = http.get(f"/v1/clips/{job['id']}").json()
        bar.done()
        if job["status"] != "done":
            raise RuntimeError(f"clip job failed: {job['error']}")
        wall = time.perf_counter() - t0
        n = job["result"]["frames"]
        report["upload"] = {"frames": n, "seconds_wall": round(wall, 2), "fps_wall": round(n / wall, 2),
                            "seconds_job": job["result"]["seconds"],
                            "fps_job": round(n / job["result"]["seconds"], 2)}
        if camera_url:
            report["cameras"] = asyncio.run(_http_cameras(http, url, camera_url, cameras, frames, api_key,
                                                          timeout_s, bar))
    return report


async def _http_cameras(http, url: str, camera_url: str, n: int, frames: int, api_key: str | None,
                        timeout_s: float, bar: Progress) -> dict:
    from websockets.asyncio.client import connect
    ids = [f"bench-{i}" for i in range(n)]
    tallies = {i: _Tally() for i in ids}
    for cid in ids:
        http.post("/v1/cameras", json={"id": cid, "url": camera_url}).raise_for_status()
    ws_base = url.replace("http", "ws", 1)
    query = "?heatmap=true" + (f"&api_key={api_key}" if api_key else "")

    async def read(cid: str) -> None:
        tally = tallies[cid]
        async with connect(f"{ws_base}/v1/cameras/{cid}/ws{query}", max_size=2**24) as ws:
            while len(tally.times) < frames:
                tally.record(json.loads(await ws.recv()))

    async def show() -> None:
        while True:
            bar.show(f"cameras: {sum(len(t.times) for t in tallies.values())}/{frames * n} frames scored")
            await asyncio.sleep(1)

    ticker = asyncio.create_task(show())
    try:
        await asyncio.wait_for(asyncio.gather(*(read(c) for c in ids)), timeout_s)
    finally:
        ticker.cancel()
        bar.done()
        status = {c: http.get(f"/v1/cameras/{c}").json() for c in ids}
        for cid in ids:
            http.delete(f"/v1/cameras/{cid}")
    per_cam = [t.fps(frames) for t in tallies.values()]
    lat = percentiles([x for t in tallies.values() for x in t.latency])
    return {"cameras": n, "frames_per_camera": frames, "fps_per_camera": round(float(np.mean(per_cam)), 2),
            "fps_aggregate": round(float(np.sum(per_cam)), 2), "latency_ms": lat,
            "drops": sum(s["drops"] for s in status.values()),
            "heatmaps_sent": sum(t.heatmaps for t in tallies.values())}
