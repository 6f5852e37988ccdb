"""Every error leaves the service as a JSON body ``{"error": "...", ...}`` with a 4xx/5xx status.
Validation errors never echo the submitted values (a camera URL may carry a password)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from runtime.redact import redact
from runtime.video import DecodeError

from .camera_store import CameraStoreError
from .cameras import DuplicateCamera, UnknownCamera
from .clips import ClipTooLarge, UnknownJob
from .security import UrlError

STATUS = {ClipTooLarge: 413, DecodeError: 422, UnknownCamera: 404, UnknownJob: 404, DuplicateCamera: 409,
          UrlError: 422, CameraStoreError: 500}


def error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": redact(message), **extra}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    async def known(request: Request, exc: Exception) -> JSONResponse:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return error(STATUS[type(exc)], str(msg))

    for exc_type in STATUS:
        app.add_exception_handler(exc_type, known)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": redact(str(e.get("msg", "")))}
                   for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(d['loc'][1:]) or d['loc'][0]}: {d['msg']}" for d in details)
        return error(422, f"invalid request: {summary}", detail=details)
