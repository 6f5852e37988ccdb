"""What every route needs: the running services, readiness, and the API key check (HTTP and WebSocket)."""

from __future__ import annotations

import secrets

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


def key_ok(conn: HTTPConnection) -> bool:
    """Whether the client sent the configured key (always true without one): ``X-API-Key``,
    ``Authorization: Bearer`` or ``?api_key=``."""
    want = services(conn).settings.api_key
    if want is None:
        return True
    auth = conn.headers.get("authorization", "")
    bearer = auth[7:] if auth.lower().startswith("bearer ") else None
    given = conn.headers.get("x-api-key") or bearer or conn.query_params.get("api_key")
    return given is not None and secrets.compare_digest(given, want.get_secret_value())


async def require_key(conn: HTTPConnection) -> None:
    if not key_ok(conn):
        raise HTTPException(401, "missing or wrong API key (X-API-Key header)")
