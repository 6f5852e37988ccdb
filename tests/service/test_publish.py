"""WebSocket fan-out on a real event loop: a client that does not read loses its oldest messages
(counted), while a reading client gets every message."""

from __future__ import annotations

import asyncio
import threading
import time

from amvad.service.metrics import Metrics
from amvad.service.publish import Broadcaster


def test_slow_client_drops_oldest_and_fast_client_gets_all():
    metrics = Metrics()
    b = Broadcaster("cam", queue_size=4, metrics=metrics)

    async def scenario():
        slow, fast = b.subscribe(heatmap=False), b.subscribe(heatmap=True)
        got = []

        async def read_fast():
            while len(got) < 20:
                got.append(await fast.queue.get())

        reader = asyncio.create_task(read_fast())
        # given a publisher thread (the camera's inference thread) sending 20 frames
        heat_calls = []

        def publish():
            for i in range(20):  # paced like a camera, so a reading client keeps up
                time.sleep(0.005)
                b.publish({"frame_id": i, "score": 1.0}, lambda: heat_calls.append(i) or b"\xff\xd8jpeg")
        t = threading.Thread(target=publish)
        t.start()
        await asyncio.to_thread(t.join)
        await asyncio.wait_for(reader, 5)
        await asyncio.sleep(0.05)
        slow_items = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
        return got, slow_items, slow, heat_calls

    got, slow_items, slow, heat_calls = asyncio.run(scenario())
    # then the fast client got all 20 in order with heatmaps, encoded once per frame
    assert [int(m.split('"frame_id": ')[1].split(",")[0]) for m in got] == list(range(20))
    assert all('"heatmap": "data:image/jpeg;base64,' in m for m in got) and heat_calls == list(range(20))
    # and the slow one holds only the newest 4; 16 drops are counted as ws_slow_client
    assert [int(m.split('"frame_id": ')[1].split(",")[0]) for m in slow_items] == [16, 17, 18, 19]
    assert slow.dropped == 16
    assert metrics.dropped.labels("cam", "ws_slow_client")._value.get() == 16
    assert metrics.ws_clients.labels("cam")._value.get() == 2
