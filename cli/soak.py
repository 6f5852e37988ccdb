"""``amvad bench --soak-minutes M``: many cameras for a long time with everything on, as a deployment
runs: N live cameras (the bundled sample replayed at ``rate`` frames/s, dropping the oldest frame when
inference falls behind), events with clips and snapshots, a signed webhook to a local receiver, one
WebSocket subscriber per camera. Samples the process's RSS every ``sample_s`` seconds and reports its
growth after warm-up, dropped frames, latency (capture -> message) percentiles, events and notifications.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from amvad.service.config import CameraConfig, WebSocketConfig, load_settings
from amvad.service.metrics import Metrics
from amvad.service.wiring import Services

from .bench import SAMPLE, Progress, percentiles


def rss_mb() -> float:
    """The process's resident memory now (not the peak), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Hooks(ThreadingHTTPServer):
    """A local webhook receiver that counts what it gets."""

    def __init__(self) -> None:
        self.received = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler):
                handler.rfile.read(int(handler.headers["content-length"]))
                self.received += 1
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args):
                return

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def run_soak(model: str = "ped2", *, cameras: int = 8, rate: float = 3.0, minutes: float = 60.0,
             source: str | Path | None = None, warmup_fraction: float = 0.1, sample_s: float = 10.0,
             backend: str = "auto", precision: str = "auto", progress: bool = True) -> dict[str, Any]:
    src = Path(source) if source else SAMPLE
    if not src.is_file():
        raise FileNotFoundError(f"soak source {src} does not exist")
    if cameras < 1 or rate <= 0 or minutes <= 0:
        raise ValueError(f"cameras >= 1, rate > 0 and minutes > 0 needed, got {cameras}, {rate}, {minutes}")
    hooks = _Hooks()
    state = tempfile.TemporaryDirectory(prefix="amvad-soak-")
    settings = load_settings(None, model=model, state_dir=Path(state.name), media_dirs=[str(src.resolve().parent)],
                             notify={"webhooks": [{"url": f"http://127.0.0.1:{hooks.server_port}/hook",
                                                   "secret": "soak"}]},
                             websocket=WebSocketConfig(queue=1000).model_dump(),
                             engine={"backend": backend, "precision": precision})
    services = Services(settings, Metrics())
    services.start()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="soak-loop", daemon=True).start()
    cams = [services.cameras.add(CameraConfig(id=f"soak-{i}", url=f"file://{src.resolve()}", replay_fps=rate),
                                 start=False) for i in range(cameras)]
    latency: list[float] = []
    received, starts = [0], [0]

    async def subscribe(cam):
        return cam.broadcaster.subscribe(heatmap=False)

    async def consume(client) -> None:
        while True:
            msg = json.loads(await client.queue.get())
            received[0] += 1
            starts[0] += msg.get("event") == "start"
            if msg.get("score") is not None and time.monotonic() > warm_until:
                latency.append(time.time() - msg["timestamp"])

    clients = [asyncio.run_coroutine_threadsafe(subscribe(c), loop).result() for c in cams]
    warm_until = time.monotonic() + warmup_fraction * minutes * 60
    consumers = [asyncio.run_coroutine_threadsafe(consume(client), loop) for client in clients]
    bar, samples = Progress(progress), []
    t0 = time.monotonic()
    for cam in cams:
        cam.start()
    try:
        while (elapsed := time.monotonic() - t0) < minutes * 60:
            samples.append((round(elapsed, 1), round(rss_mb(), 1)))
            bar.show(f"{elapsed / 60:.1f}/{minutes:g} min, RSS {samples[-1][1]:.0f} MB, "
                     f"drops {sum(c.drops for c in cams)}, events {starts[0]}",
                     force=True)
            time.sleep(min(sample_s, max(0.0, minutes * 60 - elapsed)))
        samples.append((round(time.monotonic() - t0, 1), round(rss_mb(), 1)))
        status = [c.status() for c in cams]
        events = services.events.query(limit=100_000)
    finally:
        bar.done()
        services.stop()
        for consumer in consumers:
            consumer.cancel()
        time.sleep(0.2)  # let the cancellations run before the loop stops
        loop.call_soon_threadsafe(loop.stop)
        hooks.shutdown()
        state.cleanup()
    after = [m for t, m in samples if t >= warmup_fraction * minutes * 60]
    growth = (after[-1] - after[0]) / after[0] * 100 if len(after) >= 2 else None
    frames = sum(s["frames"] for s in status)
    return {"cameras": cameras, "rate_fps": rate, "minutes": minutes, "source": str(src),
            "frames_published": frames, "messages_received": received[0],
            "dropped_frames": sum(s["drops"] for s in status),
            "dropped_share": round(sum(s["drops"] for s in status) / max(frames, 1), 5),
            "latency_ms": percentiles(latency), "events": len(events),
            "events_with_clip": sum(bool(e["clip"]) for e in events), "webhooks_received": hooks.received,
            "faults": {s["id"]: s["faults"] for s in status if s["faults"]},
            "rss_mb": {"start": samples[0][1], "after_warmup": after[0] if after else None, "end": samples[-1][1],
                       "max": max(m for _, m in samples), "growth_after_warmup_pct": None if growth is None
                       else round(growth, 2), "samples": samples},
            "rss_slope_mb_per_hour_after_warmup": _slope(samples, warmup_fraction * minutes * 60),
            "date": time.strftime("%Y-%m-%d")}


def _slope(samples: list[tuple[float, float]], after_s: float) -> float | None:
    pts = [(t, m) for t, m in samples if t >= after_s]
    if len(pts) < 3:
        return None
    t, m = np.array(pts).T
    return round(float(np.polyfit(t / 3600, m, 1)[0]), 2)
