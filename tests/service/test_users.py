"""The parts of users and roles that need no server: the users file (argon2id hashes, key hashes, mode 0600,
reloaded when another process changes it), sessions and the login limit on a fake clock, who a request is,
the rule that keeps an admin, the open service of old, a backup that carries the users, and the
self-signed certificate."""

from __future__ import annotations

import contextlib
import json
import ssl
import stat
import tarfile
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from amvad.service.auth import OPEN, Auth, LoginLimiter, Principal, Sessions, TooManyLogins, Unauthorized
from amvad.service.config import ServiceSettings
from amvad.service.metrics import Metrics
from amvad.service.users import BrokenUsersFile, UserStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_users_file_keeps_slow_hashes_and_key_hashes_only_mode_0600(tmp_path):
    path = tmp_path / "users.json"
    store = UserStore(path)
    store.add("ada", "admin", "correct horse")
    key, secret = store.add_key("ada", "nvr")
    data = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    user = json.loads(data)["users"][0]
    assert user["password_hash"].startswith("$argon2id$") and "correct horse" not in data
    assert secret.startswith("amvad_") and secret not in data and user["keys"][0]["hash"] == key.hash
    assert store.verify_password("ada", "correct horse").role == "admin"
    assert store.verify_password("ada", "wrong horse") is None and store.verify_password("bob", "x" * 8) is None
    assert store.user_of_key(secret.encode()).name == "ada" and store.user_of_key(b"amvad_other") is None
    with pytest.raises(Exception, match="exists already"):
        store.add("ada", "viewer", "another password")
    for bad in (("bad name", "viewer", "password1"), ("bob", "root", "password1"), ("bob", "viewer", "short")):
        with pytest.raises(ValueError):
            store.add(*bad)


def test_a_change_by_another_process_is_seen_at_once(tmp_path):
    service, cli = UserStore(tmp_path / "users.json"), UserStore(tmp_path / "users.json")
    assert not service.any()
    cli.add("vic", "viewer", "password-1")
    assert [u.name for u in service.list()] == ["vic"]
    cli.set_role("vic", "admin")
    assert service.get("vic").role == "admin"
    service.add("ada", "admin", "password-2")  # written over the file as it is now, not as it was read
    assert [u.name for u in cli.list()] == ["ada", "vic"]
    cli.remove("vic")
    assert [u.name for u in service.list()] == ["ada"]
    (tmp_path / "users.json").write_text("{not json")
    with pytest.raises(BrokenUsersFile):
        service.any()


def test_sessions_end_at_their_expiry_or_logout(tmp_path):
    clock = Clock()
    sessions = Sessions(lifetime_s=60, limit=3, clock=clock)
    token, expires = sessions.create("vic")
    assert sessions.user(token) == "vic" and expires == 1060 and sessions.user(token + "x") is None
    clock.now += 61
    assert sessions.user(token) is None
    token = sessions.create("vic")[0]
    sessions.drop(token)
    assert sessions.user(token) is None
    tokens = [sessions.create(f"u{i}")[0] for i in range(4)]  # at most 3: the oldest goes
    assert sessions.user(tokens[0]) is None and sessions.user(tokens[3]) == "u3"
    sessions.drop_user("u3")
    assert sessions.user(tokens[3]) is None


def test_the_login_limit_counts_per_key_within_its_window():
    clock = Clock()
    limiter = LoginLimiter(failures=3, window_s=60, clock=clock)
    keys = (("address", "10.0.0.1"), ("user", "vic"))
    for _ in range(3):
        limiter.check(keys)
        limiter.failed(keys)
        clock.now += 10
    with pytest.raises(TooManyLogins) as caught:
        limiter.check([("address", "10.0.0.2"), ("user", "vic")])
    assert caught.value.status == 429 and caught.value.retry_after_s == pytest.approx(30)
    limiter.check([("address", "10.0.0.2"), ("user", "ada")])  # another name from another address
    clock.now += 31
    limiter.check(keys)  # the first failure aged out


def settings(tmp_path, **kw) -> ServiceSettings:
    return ServiceSettings(model="unused", state_dir=tmp_path, **kw)


def test_who_a_request_is(tmp_path):
    auth = Auth(settings(tmp_path), Metrics())
    assert auth.authenticate([b"anything"], "no-such-session") == OPEN  # no users, no key: open, as before
    auth.users.add("vic", "viewer", "password-1")
    assert auth.enabled
    with pytest.raises(Unauthorized, match="missing API key or login"):
        auth.authenticate([], None)
    _, secret = auth.users.add_key("vic")
    assert auth.authenticate([b"wrong", secret.encode()], None) == Principal("vic", "viewer", "key")
    _, token, _ = auth.login("vic", "password-1", "127.0.0.1")
    assert auth.authenticate([], token) == Principal("vic", "viewer", "session")
    with pytest.raises(Unauthorized, match="wrong API key"):  # a wrong key is refused, a session beside it or not
        auth.authenticate([b"wrong"], token)
    auth.users.add("ada", "admin", "password-2")
    auth.users.remove("vic")  # a removed user's session ends with them
    with pytest.raises(Unauthorized, match="log in again"):
        auth.authenticate([], token)
    keyed = Auth(settings(tmp_path, api_key="the-admin-key"), Metrics())
    assert keyed.authenticate([b"the-admin-key"], None) == Principal("api_key", "admin", "api_key")


def test_an_api_change_that_would_leave_no_admin_is_refused():
    from amvad.service.api.users import keep_an_admin
    from amvad.service.users import User
    no_key = SimpleNamespace(auth=SimpleNamespace(admin_key=None))
    keep_an_admin(no_key, [User("ada", "admin")])
    for after in ([User("vic", "viewer")], []):
        with pytest.raises(Exception, match="no admin") as caught:
            keep_an_admin(no_key, after)
        assert caught.value.status == 409
    keep_an_admin(SimpleNamespace(auth=SimpleNamespace(admin_key=b"k")), [])  # the api_key is an admin


def test_without_users_or_a_key_the_service_is_open_and_with_one_it_is_not(tmp_path):
    # given the real app (its model never loads: only who may call matters here)
    from amvad.service.app import create_app
    client = TestClient(create_app(settings(tmp_path)), raise_server_exceptions=False)
    assert client.get("/v1/me").json() == {"name": "anonymous", "role": "admin", "via": "open", "auth": False}
    # when the first user is added (by the CLI, another process), the same running app asks who it is
    UserStore(tmp_path / "users.json").add("ada", "admin", "password-1")
    r = client.get("/v1/me")
    assert r.status_code == 401 and "API key" in r.json()["error"]
    r = client.post("/v1/login", json={"name": "ada", "password": "password-1"})
    assert r.status_code == 200 and client.get("/v1/me").json()["via"] == "session"


def test_a_backup_carries_the_users_and_a_restore_puts_them_back_0600(tmp_path):
    from amvad.service.backup import backup_to_file, restore
    from amvad.service.state import StatePaths
    src = StatePaths(tmp_path / "src")
    UserStore(src.users).add("ada", "admin", "password-1")
    backup_to_file(src, tmp_path / "b.tar.gz")
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert "state/users.json" in tar.getnames()
    restore(tmp_path / "b.tar.gz", tmp_path / "dst")
    users = StatePaths(tmp_path / "dst").users
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert UserStore(users).verify_password("ada", "password-1").role == "admin"


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, host: str) -> str:
    """A TLS handshake in memory (no socket): the version agreed, or the client's verification error."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    sides = [client.wrap_bio(c_in, c_out, server_hostname=host), server.wrap_bio(s_in, s_out, server_side=True)]
    done = [False, False]
    for _ in range(20):
        for i, side in enumerate(sides):
            if not done[i]:
                with contextlib.suppress(ssl.SSLWantReadError):  # waits for the other side's next flight
                    side.do_handshake()
                    done[i] = True
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done):
            return sides[0].version()
    raise AssertionError("the handshake did not finish")


def test_a_self_signed_certificate_names_its_hosts_and_serves_tls(tmp_path):
    from cryptography import x509

    from amvad.service.tls import self_signed
    made = self_signed(tmp_path, ["127.0.0.1", "amvad.local"])
    assert stat.S_IMODE(made.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["amvad.local"]
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(made.cert, made.key)  # a pair that belongs together
    client = ssl.create_default_context(cafile=str(made.cert))  # trusted as it is, as httpx or curl --cacert do
    assert handshake(client, server, "127.0.0.1") == "TLSv1.3"
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch|doesn't match"):
        handshake(client, server, "10.1.2.3")  # a name it was not made for
    with pytest.raises(Exception, match="exists already"):
        self_signed(tmp_path, ["127.0.0.1"])
    assert self_signed(tmp_path, ["127.0.0.1"], force=True).hosts == ("127.0.0.1",)
