"""Camera URL checks and the logging filter that keeps URL credentials out of the service's logs."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from amvad.runtime.errors import Invalid
from amvad.runtime.redact import redact

ALLOWED_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")


class UrlError(Invalid):
    """A camera URL that is malformed or uses a scheme outside the allow-list (never quotes the URL)."""


def validate_url(url: str, allowed: tuple[str, ...] | list[str] = ALLOWED_SCHEMES) -> str:
    """Return ``url`` if it is a well-formed URL with an allowed scheme; ``file`` URLs need a path."""
    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        raise UrlError("camera url must be a non-empty string without whitespace")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a non-numeric port
    except ValueError:
        raise UrlError("camera url is malformed (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in allowed:
        raise UrlError(f"camera url scheme {scheme or '(none)'!r} is not allowed; allowed: {list(allowed)}")
    if scheme == "file":
        if parts.netloc and parts.netloc != "localhost":
            raise UrlError("file url must not name a host; use file:///path/on/this/machine")
        if not parts.path:
            raise UrlError("file url needs a path, e.g. file:///videos/cam.mp4")
    elif not parts.hostname:
        raise UrlError(f"{scheme} url needs a host, e.g. {scheme}://host:554/stream")
    return url


def check_media_path(path: Path, media_dirs: list[Path]) -> None:
    """Refuse a camera file outside the media folders. Symbolic links are resolved first; the message is
    the same whether or not the path exists, so it reveals nothing about files outside them."""
    real = path.expanduser().resolve()
    if not any(real.is_relative_to(Path(d).expanduser().resolve()) for d in media_dirs):
        raise UrlError(f"file cameras must be inside the media folders (media_dirs): "
                       f"{', '.join(str(d) for d in media_dirs) or 'none configured'}")


class RedactingFilter(logging.Filter):
    """Logging filter that scrubs URL credentials from every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True
