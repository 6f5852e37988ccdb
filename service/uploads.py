"""Receiving an uploaded video: the multipart body is parsed as it streams in and the ``file`` field is
written straight to a file in the service's upload folder, counting bytes, so an upload over the limit is
refused (413) as soon as it passes it, chunked or not, with at most the limit written to disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from amvad.runtime.errors import BadRequest, TooLarge

# Multipart framing and the other (small) form fields allowed beside the file.
BODY_OVERHEAD = 2 ** 16
FILE_FIELD = "file"


class UploadTooLarge(TooLarge):
    """More bytes than the upload limit (HTTP 413)."""


class BadUpload(BadRequest):
    """A request that is not a multipart form with a ``file`` field (HTTP 400)."""


class _FilePart:
    """Callbacks for python-multipart: the first part named ``file`` goes to ``path``; other parts are
    ignored (their bytes still count towards the body limit)."""

    def __init__(self, path: Path, limit: int, limit_mb: float) -> None:
        self.path, self.limit, self.limit_mb = path, limit, limit_mb
        self.filename: str | None = None
        self.written = 0
        self._fh = None
        self._done = False
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._field, self._value = {}, b"", b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == FILE_FIELD.encode() and not self._done and self._fh is None:
            self.filename = params.get(b"filename", b"upload").decode("utf-8", "replace") or "upload"
            self._fh = self.path.open("wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._fh is None:
            return
        self.written += end - start
        if self.written > self.limit:
            raise UploadTooLarge(f"upload is larger than the limit of {self.limit_mb:g} MB")
        self._fh.write(data[start:end])

    def _end(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh, self._done = None, True

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def complete(self) -> bool:
        return self._done


async def receive_upload(request: Request, folder: Path, limit_mb: float) -> tuple[Path, str]:
    """Stream the request's multipart body; returns (the saved file, the client's file name). Raises
    :class:`UploadTooLarge` or :class:`BadUpload`; nothing is left on disk when it raises."""
    limit = int(limit_mb * 2 ** 20)
    if int(request.headers.get("content-length") or 0) > limit + BODY_OVERHEAD:
        raise UploadTooLarge(f"upload is larger than the limit of {limit_mb:g} MB")
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise BadUpload(f"expected a multipart/form-data body with the video in field {FILE_FIELD!r}")
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".bin", dir=folder)
    os.close(fd)
    part = _FilePart(Path(name), limit, limit_mb)
    try:
        parser = MultipartParser(params[b"boundary"], part.callbacks())
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + BODY_OVERHEAD:
                raise UploadTooLarge(f"upload is larger than the limit of {limit_mb:g} MB")
            parser.write(chunk)
        parser.finalize()
        if not part.complete:
            raise BadUpload(f"multipart form field {FILE_FIELD!r} with the video is required")
    except (UploadTooLarge, BadUpload):
        part.close()
        part.path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # python-multipart's parse errors, a client that went away mid-body
        part.close()
        part.path.unlink(missing_ok=True)
        raise BadUpload(f"malformed multipart body ({type(exc).__name__})") from None
    return part.path, part.filename or "upload"
