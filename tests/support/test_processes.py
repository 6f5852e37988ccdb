"""The helper that ends a hung browser finds and kills only this run's own matching children."""

from __future__ import annotations

import subprocess
import time

from tests.support.processes import descendants, kill_descendants


def test_kill_descendants_kills_matching_grandchildren_only():
    shell = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 61 & wait"])
    try:
        for _ in range(100):
            sleeps = [pid for pid, name in descendants() if name == "sleep"]
            if len(sleeps) == 2:
                break
            time.sleep(0.05)
        assert len(sleeps) == 2 and shell.pid in [pid for pid, _ in descendants()]
        assert sorted(kill_descendants("slee")) == sorted(sleeps)
        shell.wait(10)  # its children gone, the shell's wait returns
        assert shell.returncode is not None and not [p for p, n in descendants() if n == "sleep"]
    finally:
        shell.kill()
        shell.wait()
