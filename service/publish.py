"""Fan-out of per-frame messages to WebSocket clients. Each client has its own bounded queue that drops
its oldest message when full, so a slow client never stalls the camera or the other clients."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable

from .metrics import Metrics


class Client:
    """One WebSocket subscriber; ``queue`` holds JSON texts, read on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, heatmap: bool) -> None:
        self.loop, self.heatmap = loop, heatmap
        self.queue: asyncio.Queue[str] = asyncio.Queue(size)
        self.dropped = 0


class Broadcaster:
    def __init__(self, camera_id: str, queue_size: int, metrics: Metrics) -> None:
        self.camera_id, self.queue_size, self.metrics = camera_id, queue_size, metrics
        self.clients: set[Client] = set()
        self._lock = threading.Lock()

    def subscribe(self, heatmap: bool) -> Client:
        """Call on the event loop that will read the client's queue."""
        client = Client(asyncio.get_running_loop(), self.queue_size, heatmap)
        with self._lock:
            self.clients.add(client)
            self.metrics.ws_clients.labels(self.camera_id).set(len(self.clients))
        return client

    def unsubscribe(self, client: Client) -> None:
        with self._lock:
            self.clients.discard(client)
            self.metrics.ws_clients.labels(self.camera_id).set(len(self.clients))

    def publish(self, msg: dict, heatmap_jpeg: Callable[[], bytes | None]) -> None:
        """Called from the inference thread; the heatmap JPEG is encoded once, only if someone asked."""
        with self._lock:
            clients = list(self.clients)
        if not clients:
            return
        plain = json.dumps(msg)
        with_heat = plain
        if any(c.heatmap for c in clients) and msg.get("score") is not None:
            jpeg = heatmap_jpeg()
            if jpeg is not None:
                url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
                with_heat = json.dumps({**msg, "heatmap": url})
        for c in clients:
            try:
                c.loop.call_soon_threadsafe(self._put, c, with_heat if c.heatmap else plain)
            except RuntimeError:  # the client's loop has closed
                self.unsubscribe(c)

    def _put(self, client: Client, text: str) -> None:
        if client.queue.full():
            client.queue.get_nowait()
            client.dropped += 1
            self.metrics.dropped.labels(self.camera_id, "ws_slow_client").inc()
        client.queue.put_nowait(text)
