"""The service's users: a name, a role, a slow password hash (argon2id) and API keys for machines (only
each key's SHA-256 is kept: a key is 32 random bytes, so a fast hash is enough), in ``<state_dir>/users.json``
(mode 0600, written atomically). ``amvad user`` and ``/v1/users`` both change it, under a file lock; the
running service reloads it when the file changes, so a user the CLI adds can log in at once."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from amvad.runtime.errors import AmvadError, Conflict, Invalid, NotFound
from amvad.runtime.files import write_atomic

ROLES = ("viewer", "admin")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
KEY_PREFIX = "amvad_"
FORMAT = 1
_hasher = PasswordHasher()  # argon2id with the library's defaults (RFC 9106's second recommendation)


class UnknownUser(NotFound):
    """A user name that is not in the users file (HTTP 404)."""


class BrokenUsersFile(AmvadError):
    """``users.json`` cannot be read: only the ``api_key`` setting lets anyone in until it is fixed or removed."""
    status = 503


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise Invalid(f"user name {name!r} is not valid: 1-64 letters, digits, '_', '.', '@' or '-', "
                      f"starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise Invalid(f"role {role!r} is not one of {list(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise Invalid(f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def key_hash(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    hash: str
    label: str = ""
    created: float = 0.0

    def public(self) -> dict:
        return {"id": self.id, "label": self.label, "created": self.created}


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_hash: str | None = None
    created: float = 0.0
    keys: tuple[ApiKey, ...] = field(default_factory=tuple)

    def public(self) -> dict:
        """What the API and the CLI show: never a hash."""
        return {"name": self.name, "role": self.role, "created": self.created,
                "password": self.password_hash is not None, "keys": [k.public() for k in self.keys]}


class UserStore:
    """``users.json`` behind a lock; every read first checks whether another process changed the file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._users: dict[str, User] = {}
        self._stamp: tuple | None = None
        self._dummy: str | None = None

    # -- reading -------------------------------------------------------------------------------------------
    def _fresh(self) -> dict[str, User]:
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self._users = self._read() if stamp else {}
                self._stamp = stamp
            return self._users

    def _read(self) -> dict[str, User]:
        try:
            data = json.loads(self.path.read_text())
            return {u["name"]: User(u["name"], check_role(u["role"]), u.get("password_hash"), u.get("created", 0.0),
                                    tuple(ApiKey(**k) for k in u.get("keys", ()))) for u in data["users"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BrokenUsersFile(f"{self.path} is not a users file amvad wrote ({type(exc).__name__}: {exc}); "
                          f"fix or remove it") from None

    def list(self) -> list[User]:
        return sorted(self._fresh().values(), key=lambda u: u.name)

    def get(self, name: str) -> User:
        user = self._fresh().get(name)
        if user is None:
            raise UnknownUser(f"no user named {name!r}")
        return user

    def any(self) -> bool:
        return bool(self._fresh())

    # -- checking credentials ------------------------------------------------------------------------------
    def verify_password(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs. An unknown name costs the same hash, so the time taken does
        not tell which names exist. A hash made with older parameters is made again."""
        user = self._fresh().get(name) if isinstance(name, str) else None
        stored = user.password_hash if user else None
        if stored is None:
            if self._dummy is None:
                self._dummy = _hasher.hash(secrets.token_hex(16))
            stored = self._dummy
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or user.password_hash is None:
            return None
        if _hasher.check_needs_rehash(stored):
            with contextlib.suppress(Exception):
                self._change(name, lambda u: replace(u, password_hash=_hasher.hash(password)))
        return user

    def user_of_key(self, key: bytes) -> User | None:
        """The user one of whose API keys is ``key``; every stored hash is compared, in constant time."""
        digest, found = key_hash(key), None
        for user in self._fresh().values():
            for k in user.keys:
                if hmac.compare_digest(digest, k.hash):
                    found = user
        return found

    # -- changing ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, User]]:
        """The users as on disk now, for a change that is written back when the block ends; a lock file
        beside ``users.json`` keeps the CLI and the service from writing at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._stamp = None  # read again, whatever changed it
            users = dict(self._fresh())
            yield users
            data = {"format": FORMAT, "users": [{**asdict(u), "keys": [asdict(k) for k in u.keys]}
                                                for u in sorted(users.values(), key=lambda u: u.name)]}
            write_atomic(self.path, json.dumps(data, indent=1) + "\n", mode=0o600)
            self._stamp = None

    def _change(self, name: str, change) -> User:
        with self._locked() as users:
            if name not in users:
                raise UnknownUser(f"no user named {name!r}")
            users[name] = change(users[name])
            return users[name]

    def add(self, name: str, role: str, password: str | None) -> User:
        check_name(name), check_role(role)
        hashed = _hasher.hash(check_password(password)) if password is not None else None
        with self._locked() as users:
            if name in users:
                raise Conflict(f"a user named {name!r} exists already")
            users[name] = User(name, role, hashed, time.time())
            return users[name]

    def remove(self, name: str) -> None:
        with self._locked() as users:
            if users.pop(name, None) is None:
                raise UnknownUser(f"no user named {name!r}")

    def set_role(self, name: str, role: str) -> User:
        check_role(role)
        return self._change(name, lambda u: replace(u, role=role))

    def set_password(self, name: str, password: str | None) -> User:
        hashed = _hasher.hash(check_password(password)) if password is not None else None
        return self._change(name, lambda u: replace(u, password_hash=hashed))

    def add_key(self, name: str, label: str = "") -> tuple[ApiKey, str]:
        """A new API key of ``name``: the key itself is returned here, once, and never stored."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(secrets.token_hex(4), key_hash(secret.encode()), label[:64], time.time())
        self._change(name, lambda u: replace(u, keys=(*u.keys, key)))
        return key, secret

    def remove_key(self, name: str, key_id: str) -> User:
        def drop(u: User) -> User:
            if not any(k.id == key_id for k in u.keys):
                raise NotFound(f"user {name!r} has no API key {key_id!r}")
            return replace(u, keys=tuple(k for k in u.keys if k.id != key_id))
        return self._change(name, drop)
