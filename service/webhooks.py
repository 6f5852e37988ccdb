"""Webhooks added through the API (``/v1/webhooks``), kept in ``paths.webhooks`` (mode 0600: it holds the
signing secrets) and restored at start-up; those of the YAML config are the config's.

At most ``limits.max_webhooks`` (each has a sender thread); one more is a 409. The file is written before
the in-memory list changes, so a write the disk refuses (full: 507, read-only or failing: 503) leaves
both as they were.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid

from pydantic import ValidationError

from amvad.runtime.errors import Conflict, NotFound
from amvad.runtime.files import write_atomic

from .config import LimitsConfig, WebhookConfig
from .disk import storage_error
from .notify import Notifier, WebhookSender
from .state import StatePaths

log = logging.getLogger("amvad.notify")


class UnknownWebhook(NotFound):
    """A webhook id that does not exist."""


class TooManyWebhooks(Conflict):
    """``limits.max_webhooks`` webhooks exist already; one must be removed first (it will not free itself,
    so this is a 409, not a 429 to retry)."""


class ApiWebhooks:
    def __init__(self, paths: StatePaths, notifier: Notifier, limits: LimitsConfig) -> None:
        self.path = paths.webhooks
        self.notifier = notifier
        self.max_webhooks = limits.max_webhooks
        self._hooks: dict[str, tuple[WebhookConfig, WebhookSender]] = {}
        self._lock = threading.Lock()
        for hook_id, raw in self._read().items():
            try:
                cfg = WebhookConfig.model_validate(raw)
            except ValidationError:
                log.warning("ignoring stored webhook %s: invalid entry", hook_id)
                continue
            self._hooks[hook_id] = (cfg, notifier.add_webhook(cfg))
        if len(self._hooks) > self.max_webhooks:  # the limit was lowered: keep them, add no more
            log.warning("%d stored webhooks, more than limits.max_webhooks (%d); no more can be added until "
                        "some are removed", len(self._hooks), self.max_webhooks)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s)", self.path, type(exc).__name__)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, hooks: dict[str, WebhookConfig]) -> None:
        """Replace the file with ``hooks``; a refused write raises StorageFull or Unavailable."""
        data = {i: {**c.model_dump(mode="json", exclude={"secret"}),
                    "secret": c.secret.get_secret_value() if c.secret else None} for i, c in hooks.items()}
        try:
            write_atomic(self.path, json.dumps(data), mode=0o600)
        except OSError as exc:
            raise storage_error(exc, f"the webhook list {self.path}") from exc

    def _configs(self) -> dict[str, WebhookConfig]:
        return {i: c for i, (c, _) in self._hooks.items()}

    @staticmethod
    def describe(hook_id: str, cfg: WebhookConfig) -> dict:
        """What the API shows: never the secret, only whether there is one."""
        return {"id": hook_id, **cfg.model_dump(mode="json", exclude={"secret"}), "signed": cfg.secret is not None}

    def add(self, cfg: WebhookConfig) -> dict:
        """Store and start a webhook. TooManyWebhooks (409) at the limit; StorageFull / Unavailable when
        the file cannot be written (then nothing changed)."""
        hook_id = uuid.uuid4().hex[:12]
        with self._lock:
            if len(self._hooks) >= self.max_webhooks:
                raise TooManyWebhooks(f"{len(self._hooks)} webhooks exist (limits.max_webhooks is "
                                      f"{self.max_webhooks}); remove one first")
            self._write({**self._configs(), hook_id: cfg})
            self._hooks[hook_id] = (cfg, self.notifier.add_webhook(cfg))
        return self.describe(hook_id, cfg)

    def list(self) -> list[dict]:
        return [self.describe(i, c) for i, (c, _) in list(self._hooks.items())]

    def remove(self, hook_id: str) -> None:
        """UnknownWebhook (404) for an id that is not there; StorageFull / Unavailable when the file cannot
        be written (then the webhook stays, still delivering)."""
        with self._lock:
            if hook_id not in self._hooks:
                raise UnknownWebhook(f"no webhook with id {hook_id!r}")
            self._write({i: c for i, c in self._configs().items() if i != hook_id})
            _, sender = self._hooks.pop(hook_id)
        self.notifier.remove_webhook(sender)

    def __len__(self) -> int:
        return len(self._hooks)
