"""The test run's own child processes, found through /proc (no psutil)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def descendants(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, command name) of every process below ``pid`` (default: this one)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ")"
            head, _, rest = stat.read_text().rpartition(")")
            child, name = head.split(" (", 1)
            children.setdefault(int(rest.split()[1]), []).append((int(child), name))
    found, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += [c for c, _ in below]
    return found


def kill_descendants(name_contains: str) -> list[int]:
    """SIGKILL the processes below this one whose command name contains ``name_contains``; their pids."""
    killed = []
    for pid, name in descendants():
        if name_contains in name:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed
