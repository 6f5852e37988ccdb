"""Credential redaction: URL passwords and API keys in query strings never reach logs, responses, errors
or metrics."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
_SECRET_PARAM = re.compile(r"(?P<name>[?&;](?:api_key|apikey|access_token|token|password)=)[^&#\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace the ``user:password@`` part of every URL inside ``text`` with ``***@``, and the value of
    every secret query parameter (``api_key=``, ``token=``, ...) with ``***``."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('name')}***", text)
