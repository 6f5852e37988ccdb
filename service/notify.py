"""Notifications without a monitoring stack: signed webhooks and MQTT (with Home Assistant discovery).

Cameras hand events and scores to the :class:`Notifier`, which only queues them: each webhook has its own
sender thread (retries with backoff, one slow receiver delays no other), and the MQTT client publishes from
paho's network thread, so a notification never blocks a camera. Results are counted in
``vad_notifications_total{channel, result}``.

MQTT also carries each camera's arm switch: the retained state ``<prefix>/<camera>/armed`` (ON/OFF) and
the command topic ``<prefix>/<camera>/armed/set``, announced to Home Assistant as a ``switch``; a command
is handed to ``on_armed`` (the camera manager), which changes the camera and publishes the new state.

Camera events (tamper, scene change: never anomalies) have their own types, so a receiver that acts on
anomalies cannot mistake one: webhooks get ``"type": "tamper_start"`` etc. (only the webhooks whose ``on``
lists it), MQTT gets the body on ``<prefix>/<camera>/camera_event`` and the retained state
``<prefix>/<camera>/tamper`` and ``.../scene_change`` (ON/OFF), announced to Home Assistant as binary
sensors ``tamper`` (device class ``tamper``) and ``scene change``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable

import httpx

from amvad.runtime.redact import redact

from .config import MqttConfig, NotifyConfig, WebhookConfig
from .metrics import Metrics

log = logging.getLogger("amvad.notify")
BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 4.0)  # waits between the attempts of one webhook delivery
MAX_QUEUED = 1000  # MQTT messages (events) held for a broker that is away; more are refused (counted)
SWITCH_PAYLOADS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
ArmedHandler = Callable[[str, bool], object]  # (camera, armed)


def switch_payload(payload: bytes) -> bool | None:
    """ON/OFF (also true/false, 1/0, any case) as a bool; None for anything else."""
    return SWITCH_PAYLOADS.get(payload.decode("utf-8", "replace").strip().lower())


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender(threading.Thread):
    """Delivers one webhook's notifications in order, each with retries and backoff."""

    def __init__(self, cfg: WebhookConfig, metrics: Metrics) -> None:
        super().__init__(name="webhook", daemon=True)
        self.cfg, self.metrics = cfg, metrics
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=1000)

    def wants(self, camera: str, kind: str) -> bool:
        return kind in self.cfg.on and (self.cfg.cameras is None or camera in self.cfg.cameras)

    def offer(self, body: bytes) -> None:
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            self.metrics.notifications.labels("webhook", "dropped").inc()

    def run(self) -> None:
        with httpx.Client(timeout=5.0) as http:
            while (body := self.queue.get()) is not None:
                self._deliver(http, body)

    def _deliver(self, http: httpx.Client, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "amvad"}
        if self.cfg.secret is not None:
            headers["X-Amvad-Signature"] = signature(body, self.cfg.secret.get_secret_value())
        for attempt, wait in enumerate((0.0, *BACKOFF_S)):
            time.sleep(wait)
            try:
                status = http.post(self.cfg.url, content=body, headers=headers).status_code
            except httpx.HTTPError as exc:
                status, reason = None, type(exc).__name__
            else:
                reason = f"HTTP {status}"
            if status is not None and 200 <= status < 300:
                self.metrics.notifications.labels("webhook", "ok").inc()
                return
            last = attempt == len(BACKOFF_S)
            self.metrics.notifications.labels("webhook", "failed" if last else "retry").inc()
            log.warning("webhook %s: %s%s", redact(self.cfg.url), reason, "; giving up" if last else "; retrying")

    def stop(self) -> None:
        self.queue.put(None)


class MqttPublisher:
    """Events, throttled scores, an availability topic with a last will, each camera's arm switch, and
    Home Assistant discovery (binary sensors ``anomaly``, ``tamper`` and ``scene change``, a sensor ``score``
    and a switch ``armed`` per camera)."""

    def __init__(self, cfg: MqttConfig, metrics: Metrics) -> None:
        from paho.mqtt import client as mqtt
        self.cfg, self.metrics = cfg, metrics
        self.availability = f"{cfg.topic_prefix}/availability"
        self._cameras: set[str] = set()
        self._last_score: dict[str, float] = {}
        self._armed: dict[str, bool] = {}  # each camera's last state, published again after a reconnect
        self.on_armed: ArmedHandler | None = None
        self._lock = threading.Lock()
        # one client id per process: a broker drops the older of two connections with the same id
        client_id = f"amvad-{socket.gethostname()}-{os.getpid()}"
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=True)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        self.client.will_set(self.availability, "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.message_callback_add(f"{cfg.topic_prefix}/+/armed/set", self._on_armed_set)
        self.client.reconnect_delay_set(1, 30)
        self.client.max_queued_messages_set(MAX_QUEUED)  # events kept for a broker that is away, bounded
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason_code)
            return
        self._publish(self.availability, "online", retain=True)
        client.subscribe(f"{self.cfg.topic_prefix}/+/armed/set", qos=1)
        with self._lock:
            cameras, armed = sorted(self._cameras), dict(self._armed)
        for camera in cameras:
            self._discovery(camera)
        for camera, value in armed.items():
            self._publish_armed(camera, value)

    def _on_armed_set(self, client, userdata, msg) -> None:
        """A command from Home Assistant or anyone on the broker (paho's thread): change the camera."""
        camera = msg.topic[len(self.cfg.topic_prefix) + 1:-len("/armed/set")]
        value = switch_payload(msg.payload)
        if value is None:
            log.warning("MQTT %s: ignoring payload %r (expected ON or OFF)", msg.topic, msg.payload[:20])
            return
        if self.on_armed is None:
            return
        try:
            self.on_armed(camera, value)
        except Exception as exc:  # e.g. an unknown camera: the command is refused, the client goes on
            log.warning("MQTT %s: cannot set camera %r: %s", msg.topic, camera,
                        redact(getattr(exc, "message", None) or str(exc)))

    def _publish(self, topic: str, payload: str, retain: bool = False, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self.metrics.notifications.labels("mqtt", "ok" if info.rc == 0 else "failed").inc()

    def _discovery(self, camera: str) -> None:
        p, d = self.cfg.topic_prefix, self.cfg.discovery_prefix
        device = {"identifiers": [f"amvad_{camera}"], "name": f"amvad {camera}", "manufacturer": "amvad"}
        common = {"availability_topic": self.availability, "device": device}
        self._publish(f"{d}/binary_sensor/amvad_{camera}/anomaly/config", json.dumps({
            **common, "name": "anomaly", "unique_id": f"amvad_{camera}_anomaly", "device_class": "problem",
            "state_topic": f"{p}/{camera}/anomaly", "payload_on": "ON", "payload_off": "OFF"}), retain=True)
        self._publish(f"{d}/sensor/amvad_{camera}/score/config", json.dumps({
            **common, "name": "score", "unique_id": f"amvad_{camera}_score", "state_class": "measurement",
            "state_topic": f"{p}/{camera}/score", "value_template": "{{ value_json.score }}"}), retain=True)
        self._publish(f"{d}/binary_sensor/amvad_{camera}/tamper/config", json.dumps({
            **common, "name": "tamper", "unique_id": f"amvad_{camera}_tamper", "device_class": "tamper",
            "state_topic": f"{p}/{camera}/tamper", "payload_on": "ON", "payload_off": "OFF",
            "json_attributes_topic": f"{p}/{camera}/camera_event",
            "json_attributes_template": "{{ value_json.event | tojson }}"}), retain=True)
        self._publish(f"{d}/binary_sensor/amvad_{camera}/scene_change/config", json.dumps({
            **common, "name": "scene change", "unique_id": f"amvad_{camera}_scene_change",
            "icon": "mdi:theme-light-dark", "state_topic": f"{p}/{camera}/scene_change", "payload_on": "ON",
            "payload_off": "OFF"}), retain=True)
        self._publish(f"{d}/switch/amvad_{camera}/armed/config", json.dumps({
            **common, "name": "armed", "unique_id": f"amvad_{camera}_armed", "icon": "mdi:shield-check",
            "state_topic": f"{p}/{camera}/armed", "command_topic": f"{p}/{camera}/armed/set",
            "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF"}), retain=True)

    def _publish_armed(self, camera: str, armed: bool) -> None:
        self._publish(f"{self.cfg.topic_prefix}/{camera}/armed", "ON" if armed else "OFF", retain=True)

    def armed(self, camera: str, armed: bool) -> None:
        """The camera's arm state as it is now (retained); sent again after a reconnect."""
        with self._lock:
            self._armed[camera] = armed
        if self.client.is_connected():
            self._publish_armed(camera, armed)

    def camera(self, camera: str) -> None:
        with self._lock:
            new = camera not in self._cameras
            self._cameras.add(camera)
        if new and self.client.is_connected():
            self._discovery(camera)

    def event(self, camera: str, kind: str, body: str) -> None:
        self._publish(f"{self.cfg.topic_prefix}/{camera}/event", body)
        self._publish(f"{self.cfg.topic_prefix}/{camera}/anomaly", "ON" if kind == "start" else "OFF", retain=True)

    def camera_event(self, camera: str, kind: str, change: str, body: str) -> None:
        """A tamper or scene change started or ended: the body, and the retained ON/OFF of its sensor."""
        self._publish(f"{self.cfg.topic_prefix}/{camera}/camera_event", body)
        self._publish(f"{self.cfg.topic_prefix}/{camera}/{kind}", "ON" if change == "start" else "OFF", retain=True)

    def score(self, camera: str, score: float, anomaly: bool, threshold: float) -> None:
        """Scores are only worth having now: while the broker is away they are dropped (counted), never
        queued, so a broker that comes back gets the current score, not minutes of old ones."""
        now = time.monotonic()
        if now - self._last_score.get(camera, -1e9) < self.cfg.score_interval_s:
            return
        self._last_score[camera] = now
        if not self.client.is_connected():
            self.metrics.notifications.labels("mqtt", "dropped").inc()
            return
        self._publish(f"{self.cfg.topic_prefix}/{camera}/score", json.dumps(
            {"score": round(score, 4), "anomaly": anomaly, "threshold": threshold, "time": time.time()}), qos=0)

    def stop(self) -> None:
        self._publish(self.availability, "offline", retain=True)
        self.client.disconnect()
        self.client.loop_stop()


class Notifier:
    """Fans camera events out to the webhooks and MQTT; never blocks the caller."""

    def __init__(self, cfg: NotifyConfig, metrics: Metrics, public_url: str) -> None:
        self.public_url = (cfg.public_url or public_url).rstrip("/")
        self.metrics = metrics
        self.webhooks = [WebhookSender(w, metrics) for w in cfg.webhooks]
        for w in self.webhooks:
            w.start()
        self.mqtt = MqttPublisher(cfg.mqtt, metrics) if cfg.mqtt else None
        self._lock = threading.Lock()

    def add_webhook(self, cfg: WebhookConfig) -> WebhookSender:
        sender = WebhookSender(cfg, self.metrics)
        sender.start()
        with self._lock:
            self.webhooks = [*self.webhooks, sender]
        return sender

    def remove_webhook(self, sender: WebhookSender) -> None:
        with self._lock:
            self.webhooks = [w for w in self.webhooks if w is not sender]
        sender.stop()

    def camera(self, camera: str) -> None:
        if self.mqtt:
            self.mqtt.camera(camera)

    @property
    def on_armed(self) -> ArmedHandler | None:
        return self.mqtt.on_armed if self.mqtt else None

    @on_armed.setter
    def on_armed(self, handler: ArmedHandler | None) -> None:
        """Who applies an MQTT arm command (the camera manager)."""
        if self.mqtt:
            self.mqtt.on_armed = handler

    def armed(self, camera: str, armed: bool) -> None:
        if self.mqtt:
            self.mqtt.armed(camera, armed)

    def event(self, camera: str, kind: str, event: dict) -> None:
        """``kind`` is ``start`` or ``end``; ``event`` the stored event (service/event_store.py)."""
        base = f"{self.public_url}/v1/cameras/{camera}/events/{event['id']}"
        body = json.dumps({"camera": camera, "type": kind, "event": event,
                           "scores": {"peak": event["peak_score"], "threshold": event["threshold"]},
                           "snapshot_url": f"{base}/snapshot.jpg", "clip_url": f"{base}/clip.mp4"}).encode()
        for w in self.webhooks:
            if w.wants(camera, kind):
                w.offer(body)
        if self.mqtt:
            self.mqtt.event(camera, kind, body.decode())

    def camera_event(self, camera: str, change: str, event: dict) -> None:
        """A camera event (``event["kind"]`` tamper or scene_change) "start"ed or "end"ed: type
        ``<kind>_<change>``; a snapshot link, and the clip's (tamper and scene change keep one too)."""
        kind = event["kind"]
        base = f"{self.public_url}/v1/cameras/{camera}/events/{event['id']}"
        body = json.dumps({"camera": camera, "type": f"{kind}_{change}", "event": event,
                           "snapshot_url": f"{base}/snapshot.jpg", "clip_url": f"{base}/clip.mp4"}).encode()
        for w in self.webhooks:
            if w.wants(camera, f"{kind}_{change}"):
                w.offer(body)
        if self.mqtt:
            self.mqtt.camera_event(camera, kind, change, body.decode())

    def score(self, camera: str, score: float, anomaly: bool, threshold: float) -> None:
        if self.mqtt:
            self.mqtt.score(camera, score, anomaly, threshold)

    def stop(self) -> None:
        for w in self.webhooks:
            w.stop()
        if self.mqtt:
            self.mqtt.stop()
