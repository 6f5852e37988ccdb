"""Logging in and out of the built-in pages (a session cookie), the login page, and who am I."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.concurrency import run_in_threadpool

from amvad.runtime.errors import Invalid

from ..auth import SESSION_COOKIE, Principal
from ..wiring import Services
from .deps import PUBLIC, VIEWER, services
from .live import STATIC

LOGIN_PAGE = STATIC / "login.html"
router = APIRouter()


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    password: SecretStr = Field(max_length=1024)
    next: str | None = Field(None, max_length=2000, description="where a form login goes next (a path here)")


def local_path(target: str | None) -> str:
    """Only a path on this service (never ``//host`` or a scheme): a login link cannot send anyone away."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


def _cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    """HttpOnly (no script reads it), SameSite=Lax (no other site's POST carries it; links still work),
    Secure when served over TLS."""
    response.set_cookie(SESSION_COOKIE, token, max_age=max_age, path="/", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")


@router.get("/login", response_class=HTMLResponse, summary="the login page", dependencies=[PUBLIC])
def login_page() -> HTMLResponse:
    return HTMLResponse(LOGIN_PAGE.read_text())


@router.post("/v1/login", summary="log in (JSON or a form: name, password): sets the session cookie",
             dependencies=[PUBLIC])
async def login(request: Request, svc: Services = Depends(services)) -> Response:
    """401 for a wrong name or password; 429 with Retry-After after ``auth.login_failures`` failures from
    one address or for one name within ``auth.login_window_s``. A form post is sent on to ``next``."""
    ctype = request.headers.get("content-type", "")
    is_form = ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))
    try:
        data = dict(await request.form()) if is_form else await request.json()
        body = Login.model_validate(data)
    except (ValueError, ValidationError):  # never echo what was sent: it holds a password
        raise Invalid("a login needs a JSON object or a form with a name and a password") from None
    client = request.client.host if request.client else "unknown"
    user, token, expires = await run_in_threadpool(svc.auth.login, body.name, body.password.get_secret_value(),
                                                   client)
    response: Response
    if is_form:
        response = RedirectResponse(local_path(body.next), status_code=303)
    else:
        response = JSONResponse({"name": user.name, "role": user.role,
                                 "expires": datetime.fromtimestamp(expires, timezone.utc).isoformat()})
    _cookie(response, request, token, max(1, int(expires - time.time())))
    return response


@router.post("/v1/logout", summary="end this browser's login session", dependencies=[PUBLIC])
def logout(request: Request, svc: Services = Depends(services)) -> Response:
    if token := request.cookies.get(SESSION_COOKIE):
        svc.auth.sessions.drop(token)
    response = JSONResponse({"logged_out": True})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=request.url.scheme == "https")
    return response


@router.get("/v1/me", summary="who this request is: name, role and how it was recognised")
def me(who: Principal = VIEWER, svc: Services = Depends(services)) -> dict:
    """``via``: ``open`` (the service has no users and no api_key), ``api_key``, ``key`` or ``session``."""
    return {**who.public(), "auth": svc.auth.enabled}
