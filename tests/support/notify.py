"""Real notification peers for tests: a mosquitto broker on a free loopback port (it can be killed and
started again on the same port), an MQTT subscriber that records every message, and an HTTP receiver
that records every webhook POST."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.servers import free_port, stop_process


class Broker:
    """Debian's mosquitto on ``port``; :meth:`kill` and :meth:`start` keep the port."""

    def __init__(self, folder: Path) -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            pytest.skip("mosquitto not found (apt-get install mosquitto)")
        self.port, self.conf = free_port(), folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"mosquitto did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@contextlib.contextmanager
def mosquitto(folder: Path) -> Iterator[int]:
    broker = Broker(folder)
    broker.start()
    try:
        yield broker.port
    finally:
        broker.stop()


class Subscriber:
    """Every MQTT message under ``#`` with its arrival time (paho, the same library the service uses)."""

    def __init__(self, port: int, client_id: str = "test-sub") -> None:
        from paho.mqtt import client as mqtt
        self.messages: list[tuple[float, str, bytes, bool]] = []
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda c, u, m: self.messages.append((time.time(), m.topic, m.payload, m.retain))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def topic(self, name: str) -> list[tuple[float, bytes]]:
        return [(t, p) for t, topic, p, _ in self.messages if topic == name]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Receiver(ThreadingHTTPServer):
    """Answers 500 to the first ``failures`` POSTs, then 200; records every one."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.posts = failures, []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler):
                body = handler.rfile.read(int(handler.headers["content-length"]))
                self.posts.append((time.time(), handler.headers, body))
                status = 500 if len(self.posts) <= self.failures else 200
                handler.send_response(status)
                handler.end_headers()

            def log_message(handler, *args):
                return

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
