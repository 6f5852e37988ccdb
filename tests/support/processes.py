"""The test run's own child processes, found through /proc (no psutil)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def descendants(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, command name) of every process below ``pid`` (default: this one)."""
    parent: dict[int, int] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ")"
            head, _, rest = text.rpartition(")")
            child = int(head.split(" (", 1)[0])
            names[child], parent[child] = head.split(" (", 1)[1], int(rest.split()[1])
    found, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        below = [c for c, p in parent.items() if p == todo[-1]]
        todo.pop()
        found += [(c, names[c]) for c in below]
        todo += below
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
