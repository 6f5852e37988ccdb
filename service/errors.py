"""Every error leaves the service as a JSON body ``{"error": "...", ...}`` with a 4xx/5xx status. Errors a
request can cause derive from ``runtime.errors.AmvadError`` and carry their status, so there is no table
here for a new one to be missing from; anything else is a 500 with a request id that the log line with
the traceback carries too. Validation errors never echo the submitted values (a URL may hold a password)."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from amvad.runtime.errors import AmvadError
from amvad.runtime.redact import redact

log = logging.getLogger("amvad.service")


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": redact(message), **extra}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AmvadError)
    async def known(request: Request, exc: AmvadError) -> JSONResponse:
        retry = None if exc.retry_after_s is None else {"Retry-After": str(round(exc.retry_after_s))}
        return error(exc.status, exc.message, retry)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.error("request %s %s failed (request id %s): %s", request.method, request.url.path, request_id,
                  redact(f"{type(exc).__name__}: {exc}"), exc_info=exc)
        return error(500, f"internal error (request id {request_id}); the service log has the details",
                     request_id=request_id)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": redact(str(e.get("msg", "")))}
                   for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(d['loc'][1:]) or d['loc'][0]}: {d['msg']}" for d in details)
        return error(422, f"invalid request: {summary}", detail=details)
