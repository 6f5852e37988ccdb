"""Credential redaction: URLs with passwords never reach logs, responses, errors or metrics."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")


def redact(text: str) -> str:
    """Replace the ``user:password@`` part of every URL inside ``text`` with ``***@``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
