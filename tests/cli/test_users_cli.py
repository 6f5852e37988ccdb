"""``amvad user`` and ``amvad tls self-signed`` as a person runs them: the password from stdin, JSON on
stdout, a clear error and exit status 2 for what cannot be done."""

from __future__ import annotations

import io
import json
import stat
import sys

import pytest

from amvad.cli.main import main
from amvad.service.users import UserStore


def run(argv: list[str], capsys, stdin: str = "") -> tuple[int, str, str]:
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        status = main(argv)
    finally:
        sys.stdin = saved
    out = capsys.readouterr()
    return status, out.out, out.err


def test_users_are_added_listed_changed_and_removed(tmp_path, capsys):
    state = ["--state-dir", str(tmp_path)]
    status, out, _ = run(["user", "add", "ada", "--role", "admin", "--password-stdin", *state], capsys,
                         "a long password\n")
    assert status == 0 and json.loads(out)["role"] == "admin"
    assert UserStore(tmp_path / "users.json").verify_password("ada", "a long password") is not None
    assert run(["user", "add", "vic", "--role", "viewer", "--password-stdin", *state], capsys, "vic-password\n")[0] == 0
    status, _, err = run(["user", "add", "vic", "--role", "viewer", "--password-stdin", *state], capsys, "x" * 9)
    assert status == 2 and "exists already" in err
    status, _, err = run(["user", "add", "bob", "--role", "viewer", "--password-stdin", *state], capsys, "short\n")
    assert status == 2 and "8 to 1024 characters" in err
    assert [u["name"] for u in json.loads(run(["user", "list", *state], capsys)[1])] == ["ada", "vic"]
    assert json.loads(run(["user", "set-role", "vic", "admin", *state], capsys)[1])["role"] == "admin"
    status, out, err = run(["user", "key", "vic", "--label", "nvr", *state], capsys)
    made = json.loads(out)
    assert status == 0 and made["key"].startswith("amvad_") and "shown this once" in err
    assert made["key"] not in (tmp_path / "users.json").read_text()
    assert run(["user", "revoke-key", "vic", made["id"], *state], capsys)[0] == 0
    assert run(["user", "passwd", "vic", "--password-stdin", *state], capsys, "new-password\n")[0] == 0
    assert UserStore(tmp_path / "users.json").verify_password("vic", "new-password") is not None
    assert run(["user", "set-role", "ada", "viewer", *state], capsys)[0] == 0  # vic is still an admin
    status, _, err = run(["user", "set-role", "vic", "viewer", *state], capsys)
    assert status == 0 and "no user is an admin" in err
    assert run(["user", "remove", "vic", *state], capsys)[0] == 0
    status, _, err = run(["user", "remove", "vic", *state], capsys)
    assert status == 2 and "no user named 'vic'" in err
    status, _, err = run(["user", "add", "eve", "--role", "viewer", *state], capsys)  # no terminal to ask
    assert status == 2 and "--password-stdin" in err
    with pytest.raises(SystemExit):
        main(["user", "add", "eve", "--role", "root", *state])


def test_tls_self_signed_writes_a_pair_and_keeps_an_existing_one(tmp_path, capsys):
    status, out, err = run(["tls", "self-signed", "--out", str(tmp_path), "--host", "127.0.0.1"], capsys)
    made = json.loads(out)
    assert status == 0 and made["hosts"] == ["127.0.0.1"] and "amvad serve --tls-cert" in err
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert (tmp_path / "cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    status, _, err = run(["tls", "self-signed", "--out", str(tmp_path)], capsys)
    assert status == 2 and "--force" in err
