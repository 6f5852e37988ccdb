"""Who is calling and what they may do: roles, login sessions, the limit on failed logins, and the errors
that say 401 (who are you?), 403 (not with your role) and 429 (too many failed logins).

Credentials, strongest first: an API key (the ``api_key`` setting is an admin key; each user may have keys
of their own, with that user's role) or a login session (a random token in an HttpOnly cookie). With no
``api_key`` and no user at all the service is open, as it always was: everyone is an admin (it binds to
127.0.0.1 unless told otherwise, and warns then)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from amvad.runtime.errors import AmvadError

from .config import ServiceSettings
from .metrics import Metrics
from .users import User, UserStore

ROLE_RANK = {"public": 0, "viewer": 1, "admin": 2}
SESSION_COOKIE = "amvad_session"


class Unauthorized(AmvadError):
    status = 401


class Forbidden(AmvadError):
    status = 403


class TooManyLogins(AmvadError):
    status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1.0, retry_after_s)


@dataclass(frozen=True)
class Principal:
    """``via``: ``open`` (no credentials configured), ``api_key`` (the setting), ``key`` (a user's API key)
    or ``session`` (logged in)."""
    name: str
    role: str
    via: str

    def may(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def public(self) -> dict:
        return {"name": self.name, "role": self.role, "via": self.via}


OPEN = Principal("anonymous", "admin", "open")


class Sessions:
    """Login sessions, in memory (a restart logs everyone out): the SHA-256 of each token, so the table holds
    nothing a client could present, maps to its user and expiry. At most ``limit``: the oldest go first."""

    def __init__(self, lifetime_s: float, limit: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.lifetime_s, self.limit, self.clock = lifetime_s, limit, clock
        self._table: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _id(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()

    def create(self, name: str) -> tuple[str, float]:
        token, now = secrets.token_urlsafe(32), self.clock()
        with self._lock:
            self._table = {k: v for k, v in self._table.items() if v[1] > now}
            while len(self._table) >= self.limit:
                del self._table[next(iter(self._table))]
            self._table[self._id(token)] = (name, now + self.lifetime_s)
        return token, now + self.lifetime_s

    def user(self, token: str) -> str | None:
        with self._lock:
            entry = self._table.get(self._id(token))
        return entry[0] if entry and entry[1] > self.clock() else None

    def drop(self, token: str) -> None:
        with self._lock:
            self._table.pop(self._id(token), None)

    def drop_user(self, name: str) -> None:
        with self._lock:
            self._table = {k: v for k, v in self._table.items() if v[0] != name}


class LoginLimiter:
    """At most ``failures`` failed logins per client address and per user name within ``window_s``; past
    that, logins from that address or for that name are refused (429) until the oldest failure ages out,
    even with the right password: guessing stays slow whoever guesses."""

    def __init__(self, failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.window_s, self.clock = failures, window_s, clock
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._seen.get(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def check(self, keys: Iterable[tuple[str, str]]) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.failures:
                    raise TooManyLogins(f"too many failed logins for this {key[0]}; try again later",
                                        times[0] + self.window_s - now)

    def failed(self, keys: Iterable[tuple[str, str]]) -> None:
        now = self.clock()
        with self._lock:
            if len(self._seen) > 10_000:  # forget whoever has no recent failure
                self._seen = {k: t for k, t in self._seen.items() if self._recent(k, now)}
            for key in keys:
                self._seen.setdefault(key, deque(maxlen=self.failures)).append(now)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._seen.pop(key, None)


class Auth:
    """The users, the admin key, the sessions and the login limit of one service."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics) -> None:
        self.users = UserStore(settings.paths.users)
        self.admin_key = None if settings.api_key is None else settings.api_key.get_secret_value().encode()
        self.sessions = Sessions(settings.auth.session_hours * 3600)
        self.limiter = LoginLimiter(settings.auth.login_failures, settings.auth.login_window_s)
        self.metrics = metrics
        # a password hash takes ~64 MiB and tens of ms: a burst of logins waits here instead of piling up
        self._hashing = threading.BoundedSemaphore(2)

    @property
    def enabled(self) -> bool:
        return self.admin_key is not None or self.users.any()

    def authenticate(self, keys: list[bytes], session: str | None) -> Principal:
        """Keys are bytes as the client sent them, compared in constant time; any key that matches counts.
        A key that matches nothing is refused even with a session beside it."""
        if not self.enabled:
            return OPEN
        for key in keys:
            if self.admin_key is not None and hmac.compare_digest(key, self.admin_key):
                return Principal("api_key", "admin", "api_key")
            if user := self.users.user_of_key(key):
                return Principal(user.name, user.role, "key")
        if keys:
            raise Unauthorized("wrong API key")
        if session is not None:
            name = self.sessions.user(session)
            user = next((u for u in self.users.list() if u.name == name), None) if name else None
            if user is None:
                raise Unauthorized("the login session has ended or expired; log in again at /login")
            return Principal(user.name, user.role, "session")
        raise Unauthorized("missing API key or login (X-API-Key header, Authorization: Bearer, or log in at /login)")

    def login(self, name: str, password: str, client: str) -> tuple[User, str, float]:
        """A new session of ``name``: (user, token, expiry as Unix time). Blocks for a password hash: call it
        off the event loop."""
        keys = (("address", client), ("user", name.lower()))
        with self._hashing:
            try:
                self.limiter.check(keys)
            except TooManyLogins:
                self.metrics.logins.labels("throttled").inc()
                raise
            user = self.users.verify_password(name, password)
            if user is None:
                self.limiter.failed(keys)
                self.metrics.logins.labels("failed").inc()
                raise Unauthorized("wrong user name or password")
        self.limiter.forget(keys[1])
        self.metrics.logins.labels("ok").inc()
        token, expires = self.sessions.create(user.name)
        return user, token, expires
