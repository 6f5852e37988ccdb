"""Every error leaves the service as a JSON body ``{"error": "...", ...}`` with a 4xx/5xx status; an
unexpected one as a 500 with a request id that the log line with the traceback carries too. Validation
errors never echo the submitted values (a camera URL may carry a password)."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from runtime.redact import redact
from runtime.video import DecodeError

from .camera_manager import CameraModelError, DuplicateCamera, UnknownCamera
from .camera_store import CameraStoreError
from .cameras import CameraNotLive
from .clips import ClipTooLarge, QueueFull, UnknownJob
from .event_store import UnknownEvent
from .fit_jobs import FitBusy, FootageError, UnknownFit
from .model_registry import InvalidModel, ModelConflict, UnknownModel
from .recordings import RecordingBusy, UnknownRecording
from .security import UrlError
from .uploads import BadUpload, UploadTooLarge
from .webhooks import UnknownWebhook

STATUS = {ClipTooLarge: 413, UploadTooLarge: 413, BadUpload: 400, DecodeError: 422, UnknownCamera: 404,
          UnknownJob: 404, DuplicateCamera: 409, UrlError: 422, QueueFull: 429, CameraStoreError: 500,
          UnknownModel: 404, InvalidModel: 422, ModelConflict: 409, CameraModelError: 422, CameraNotLive: 409,
          UnknownRecording: 404, RecordingBusy: 409, UnknownFit: 404, FitBusy: 429, FootageError: 422,
          UnknownEvent: 404, UnknownWebhook: 404}
RETRY_AFTER_S = 5  # what a 429 asks the client to wait
log = logging.getLogger("amvad.service")


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": redact(message), **extra}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def known(request: Request, exc: Exception) -> JSONResponse:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        status = STATUS[type(exc)]
        return error(status, str(msg), {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else None)

    for exc_type in STATUS:
        app.add_exception_handler(exc_type, known)

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
