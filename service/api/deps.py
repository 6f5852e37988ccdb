"""What every route needs: the running services, readiness, and the API key check (HTTP and WebSocket)."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import HTTPException
from starlette.requests import HTTPConnection

from ..wiring import Services


def services(conn: HTTPConnection) -> Services:
    return conn.app.state.services


def ready(conn: HTTPConnection) -> Services:
    """The services once the model is loaded; 503 with the reason before (or when loading failed)."""
    svc = services(conn)
    if not svc.ready:
        raise HTTPException(503, svc.load_error or "model is still loading")
    return svc


# The live page sends its key as a WebSocket subprotocol (never in a URL that access logs keep): it offers
# ``amvad`` and ``amvad.key.<base64url(key) without padding>``, and the server selects ``amvad``.
WS_PROTOCOL = "amvad"
WS_KEY_PREFIX = "amvad.key."


def offered_keys(conn: HTTPConnection) -> list[bytes]:
    """Every key the client sent, as raw bytes: ``X-API-Key``, ``Authorization: Bearer``, ``?api_key=``
    and (WebSocket) the key subprotocol. Headers arrive as latin-1 text, so encoding back gives their bytes."""
    keys = []
    if (value := conn.headers.get("x-api-key")) is not None:
        keys.append(value.encode("latin-1"))
    auth = conn.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        keys.append(auth[7:].encode("latin-1"))
    if (value := conn.query_params.get("api_key")) is not None:
        keys.append(value.encode("utf-8", "replace"))
    for proto in conn.headers.get("sec-websocket-protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith(WS_KEY_PREFIX):
            token = proto[len(WS_KEY_PREFIX):]
            try:
                keys.append(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            except (ValueError, binascii.Error):
                continue
    return keys


def key_ok(conn: HTTPConnection) -> bool:
    """Whether the client sent the configured key (always true without one); compared as bytes in
    constant time, so any byte sequence a client sends is a plain yes or no."""
    want = services(conn).settings.api_key
    if want is None:
        return True
    expected = want.get_secret_value().encode("utf-8")
    return any(hmac.compare_digest(given, expected) for given in offered_keys(conn))


async def require_key(conn: HTTPConnection) -> None:
    if not key_ok(conn):
        raise HTTPException(401, "missing or wrong API key (X-API-Key header)")
