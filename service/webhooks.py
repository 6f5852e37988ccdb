"""Webhooks added through the API (``/v1/webhooks``), kept in ``<state_dir>/webhooks.json`` (mode 0600:
it holds the signing secrets) and restored at start-up; those of the YAML config are the config's."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path

from pydantic import ValidationError

from runtime.files import write_atomic

from .notify import Notifier, WebhookConfig, WebhookSender

log = logging.getLogger("amvad.notify")


class UnknownWebhook(LookupError):
    """A webhook id that does not exist (HTTP 404)."""


class ApiWebhooks:
    def __init__(self, state_dir: Path, notifier: Notifier) -> None:
        self.path = Path(state_dir) / "webhooks.json"
        self.notifier = notifier
        self._hooks: dict[str, tuple[WebhookConfig, WebhookSender]] = {}
        self._lock = threading.Lock()
        for hook_id, raw in self._read().items():
            try:
                cfg = WebhookConfig.model_validate(raw)
            except ValidationError:
                log.warning("ignoring stored webhook %s: invalid entry", hook_id)
                continue
            self._hooks[hook_id] = (cfg, notifier.add_webhook(cfg))

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s)", self.path, type(exc).__name__)
            return {}

    def _write(self) -> None:
        data = {i: {**c.model_dump(mode="json", exclude={"secret"}),
                    "secret": c.secret.get_secret_value() if c.secret else None} for i, (c, _) in self._hooks.items()}
        write_atomic(self.path, json.dumps(data), mode=0o600)

    @staticmethod
    def describe(hook_id: str, cfg: WebhookConfig) -> dict:
        """What the API shows: never the secret, only whether there is one."""
        return {"id": hook_id, **cfg.model_dump(mode="json", exclude={"secret"}), "signed": cfg.secret is not None}

    def add(self, cfg: WebhookConfig) -> dict:
        hook_id = uuid.uuid4().hex[:12]
        with self._lock:
            self._hooks[hook_id] = (cfg, self.notifier.add_webhook(cfg))
            self._write()
        return self.describe(hook_id, cfg)

    def list(self) -> list[dict]:
        return [self.describe(i, c) for i, (c, _) in self._hooks.items()]

    def remove(self, hook_id: str) -> None:
        with self._lock:
            if hook_id not in self._hooks:
                raise UnknownWebhook(f"no webhook with id {hook_id!r}")
            _, sender = self._hooks.pop(hook_id)
            self._write()
        self.notifier.remove_webhook(sender)
