"""Atomic file writes: a reader (or a restart after a crash) sees the old file or the new one, never half
of one. Checkpoints, flow caches, exported models, running statistics and the camera list all use this."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write; on success it is fsynced and renamed
    over ``path``, on an error removed (``path`` untouched). The file exists with ``mode`` before the caller
    writes to it, so a secret never sits in a file with wider permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask, or a leftover file, may have given other permissions
    finally:
        os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) in one step."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
