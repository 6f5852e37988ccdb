"""What every route needs: the running services, readiness, and who is calling with which role (HTTP and
WebSocket). Every route declares its role with one of ``PUBLIC``, ``VIEWER``, ``ADMIN`` (or, for the
WebSocket, :func:`websocket_role`); tests/service/test_roles.py fails for a route without one."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote, urlsplit

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from amvad.runtime.errors import AmvadError

from ..auth import SESSION_COOKIE, Forbidden, Principal, Unauthorized
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


def principal(conn: HTTPConnection) -> Principal:
    """Who is calling (worked out once per request); Unauthorized when nobody the service knows."""
    if (who := conn.scope.get("amvad.principal")) is None:
        who = services(conn).auth.authenticate(offered_keys(conn), conn.cookies.get(SESSION_COOKIE))
        if who.via == "session":
            check_origin(conn)
        conn.scope["amvad.principal"] = who
    return who


def check_origin(conn: HTTPConnection) -> None:
    """A browser sends the session cookie with any request to this host, also one that a page on another
    port of the same host starts; it says where such a request comes from in ``Origin``. A change (any
    method but GET/HEAD) or a WebSocket with the cookie must come from this service's own pages."""
    origin = conn.headers.get("origin")
    if origin is None or (conn.scope["type"] == "http" and conn.scope["method"] in ("GET", "HEAD")):
        return
    if urlsplit(origin).netloc.lower() != conn.headers.get("host", "").lower():
        raise Forbidden(f"a request from {origin} with this service's login session is refused (use an API key)")


def login_url(conn: HTTPConnection) -> str:
    target = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
    return "/login?next=" + quote(target, safe="")


def require_role(role: str, *, page: bool = False):
    """The dependency of a route that ``role`` (or a higher one) may call: 401 without credentials, 403
    with a lower role. ``page``: a browser (Accept: text/html) that sent no key is sent to the login page."""
    async def check(conn: HTTPConnection) -> Principal:
        try:
            who = principal(conn)
        except Unauthorized:
            if page and not offered_keys(conn) and "text/html" in conn.headers.get("accept", ""):
                raise HTTPException(303, "log in first", headers={"Location": login_url(conn)}) from None
            raise
        if not who.may(role):
            raise Forbidden(f"this needs the {role} role; {who.name} is a {who.role}")
        return who
    check.amvad_role = role
    return check


async def public() -> None:
    """Anyone: health, readiness, metrics, the login page and login itself."""


public.amvad_role = "public"


def websocket_role(role: str):
    """As :func:`require_role`, for a WebSocket, which reports a refusal as a message before it closes:
    the dependency returns the error instead of raising it."""
    http_check = require_role(role)

    async def check(conn: HTTPConnection) -> Principal | AmvadError:
        try:
            return await http_check(conn)
        except AmvadError as exc:
            return exc
    check.amvad_role = role
    return check


PUBLIC = Depends(public)
VIEWER = Depends(require_role("viewer"))
ADMIN = Depends(require_role("admin"))
VIEWER_PAGE = Depends(require_role("viewer", page=True))
require_key = require_role("admin")  # the one role there was before users: what an older route meant
