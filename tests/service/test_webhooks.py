"""Webhooks added through the API: bounded (409 past ``limits.max_webhooks``), restored from
``StatePaths.webhooks``, and a write the disk refuses changes nothing (507 full, 503 read-only)."""

from __future__ import annotations

import errno
import json
import stat
import subprocess

import pytest

import amvad.service.webhooks as webhooks_mod
from amvad.runtime.errors import Conflict, NotFound, StorageFull, Unavailable
from amvad.service.config import LimitsConfig, NotifyConfig, WebhookConfig
from amvad.service.metrics import Metrics
from amvad.service.notify import Notifier
from amvad.service.state import StatePaths
from amvad.service.webhooks import ApiWebhooks, TooManyWebhooks, UnknownWebhook

HOOK = WebhookConfig(url="http://127.0.0.1:9/hook", secret="s3cret")


@pytest.fixture
def notifier():
    n = Notifier(NotifyConfig(), Metrics(), "http://127.0.0.1:8000")
    yield n
    for sender in list(n.webhooks):
        n.remove_webhook(sender)


def test_errors_carry_their_http_status():
    assert issubclass(UnknownWebhook, NotFound) and UnknownWebhook.status == 404
    assert issubclass(TooManyWebhooks, Conflict) and TooManyWebhooks.status == 409


def test_at_most_max_webhooks_and_one_sender_each(tmp_path, notifier):
    hooks = ApiWebhooks(StatePaths(tmp_path), notifier, LimitsConfig(max_webhooks=3))
    added = [hooks.add(HOOK) for _ in range(3)]
    with pytest.raises(TooManyWebhooks, match="max_webhooks"):
        hooks.add(HOOK)
    assert len(hooks) == 3 and len(notifier.webhooks) == 3
    hooks.remove(added[0]["id"])
    with pytest.raises(UnknownWebhook):
        hooks.remove(added[0]["id"])
    hooks.add(HOOK)  # room again
    assert len(hooks.list()) == 3 and len(notifier.webhooks) == 3


def test_webhooks_are_restored_from_the_state_paths_file_with_their_secret_hidden(tmp_path, notifier):
    paths = StatePaths(tmp_path)
    hook = ApiWebhooks(paths, notifier, LimitsConfig()).add(HOOK)
    assert stat.S_IMODE(paths.webhooks.stat().st_mode) == 0o600
    assert json.loads(paths.webhooks.read_text())[hook["id"]]["secret"] == "s3cret"
    again = ApiWebhooks(paths, notifier, LimitsConfig())
    assert again.list() == [hook] and hook["signed"] and "secret" not in hook


@pytest.mark.parametrize(("code", "error"), [(errno.ENOSPC, StorageFull), (errno.EROFS, Unavailable),
                                             (errno.EIO, Unavailable)])
def test_a_refused_write_is_a_clear_error_and_changes_nothing(tmp_path, notifier, monkeypatch, code, error):
    paths = StatePaths(tmp_path)
    hooks = ApiWebhooks(paths, notifier, LimitsConfig())
    kept = hooks.add(HOOK)
    before = paths.webhooks.read_text()

    def refuse(*args, **kwargs):
        raise OSError(code, "refused by the test")

    monkeypatch.setattr(webhooks_mod, "write_atomic", refuse)
    with pytest.raises(error, match="webhook list"):
        hooks.add(HOOK)
    with pytest.raises(error):
        hooks.remove(kept["id"])
    assert hooks.list() == [kept] and len(notifier.webhooks) == 1 and paths.webhooks.read_text() == before
    monkeypatch.undo()
    hooks.remove(kept["id"])  # works once the disk does
    assert hooks.list() == [] and notifier.webhooks == []


def test_a_read_only_state_directory_is_503(tmp_path, notifier):
    mnt = tmp_path / "state"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        hooks = ApiWebhooks(StatePaths(mnt), notifier, LimitsConfig())
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(Unavailable, match="Read-only"):
            hooks.add(HOOK)
        assert hooks.list() == [] and notifier.webhooks == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
