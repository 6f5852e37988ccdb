"""Helpers for the deploy tests: the Prometheus/Alertmanager binaries (Debian packages `prometheus`,
`prometheus-alertmanager`), skipping with a clear reason when they are missing, and YAML loading."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "amvad.rules.yml"
INSTALL = "apt-get install -y prometheus prometheus-alertmanager"


def binary(name: str) -> str:
    """Path of a Prometheus tool, or skip the test naming the package that provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found on PATH (Debian: {INSTALL})")
    return path


def run_tool(args: list[str], cwd: Path | None = None) -> str:
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(args)} failed ({res.returncode}):\n{out}"
    return out


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def check_promql(exprs: dict[str, str], tmp: Path) -> None:
    """Parse every PromQL expression with `promtool check rules` (one recording rule each); the
    assertion message names the expression's origin."""
    promtool = binary("promtool")
    for i, (origin, expr) in enumerate(exprs.items()):
        path = tmp / f"expr{i}.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": [
            {"record": f"check:expr{i}", "expr": expr}]}]}))
        res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, f"{origin}: PromQL does not parse: {expr!r}\n{res.stdout}{res.stderr}"
