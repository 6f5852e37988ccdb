"""Errors that carry their HTTP status. Every error a request can cause derives from one of these, so
the HTTP layer maps it by its ``status`` attribute (``service/errors.py``) and a new error class cannot
fall through to a silent 500. This module imports nothing of ours: runtime and service both use it."""

from __future__ import annotations


class AmvadError(Exception):
    """Base of the errors a caller can cause or should be told about; ``status`` is the HTTP status."""
    status = 500
    retry_after_s: float | None = None  # sent as ``Retry-After`` when set

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class BadRequest(AmvadError, ValueError):
    status = 400


class NotFound(AmvadError, LookupError):
    status = 404


class Conflict(AmvadError, RuntimeError):
    status = 409


class TooLarge(AmvadError, ValueError):
    status = 413


class Invalid(AmvadError, ValueError):
    status = 422


class Busy(AmvadError, RuntimeError):
    status = 429
    retry_after_s = 5


class Unavailable(AmvadError, RuntimeError):
    """A dependency (the event database, the disk) fails right now; the request may work later."""
    status = 503
    retry_after_s = 5


class StorageFull(AmvadError, OSError):
    """The state directory has no room for what was asked (a bound of ours, or the disk itself)."""
    status = 507
