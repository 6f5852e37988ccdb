"""What a failed write under the state directory becomes for the caller: a full disk (or quota) is
:class:`StorageFull` (507), anything else the disk refuses (read-only, I/O error, permissions) is
:class:`Unavailable` (503); both name what was being written and the system's reason."""

from __future__ import annotations

import errno

from amvad.runtime.errors import AmvadError, StorageFull, Unavailable

FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def storage_error(exc: OSError, what: str) -> AmvadError:
    """The error to raise (``from exc``) when writing ``what`` failed with ``exc``."""
    reason = exc.strerror or str(exc)
    if exc.errno in FULL:
        return StorageFull(f"cannot write {what}: the disk is full ({reason})")
    return Unavailable(f"cannot write {what}: {reason}")
