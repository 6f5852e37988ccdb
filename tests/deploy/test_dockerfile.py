"""The Dockerfile, the lock and the compose file read as text (tests/deploy/test_image.py builds and runs
the image): locked versions that satisfy pyproject, installed by the image and CI alike, the torch index a
build argument, the bundled model baked in, non-root, health check, state volume, a consistent compose stack."""

from __future__ import annotations

import fnmatch
import json
import re

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.deploy import DEPLOY, REPO, load_yaml

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    out, stage = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        if op.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args
        out.append((stage, op.upper(), args.strip()))
    return out


def locked() -> dict[str, str]:
    """Package name -> pinned version in requirements.lock."""
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pkg, _, version = line.partition("==")
            pins[canonicalize_name(pkg)] = version.split(";")[0].strip()
    return pins


def test_every_dependency_is_locked_at_a_version_that_satisfies_pyproject():
    pins = locked()
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]
    for dep in map(Requirement, deps):
        if dep.name == "torch":  # CPU and CUDA builds share a version: installed first, per variant
            assert "torch" not in pins
            continue
        assert canonicalize_name(dep.name) in pins, f"{dep.name} is not in requirements.lock"
        assert dep.specifier.contains(pins[canonicalize_name(dep.name)]), (dep, pins[canonicalize_name(dep.name)])
    assert "deploy/refresh-lock.sh" in (REPO / "requirements.lock").read_text()  # says how it was made


def test_image_and_ci_install_the_locked_versions():
    final_runs = " ".join(a for st, op, a in instructions() if st == "final" and op == "RUN")
    assert "pip install --no-cache-dir -c /tmp/requirements.lock /wheels/*.whl" in final_runs
    assert ("final", "COPY", "requirements.lock /tmp/requirements.lock") in instructions()
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"pip install .*-c requirements\.lock -e \"\.\[test\]\"", ci)
    # the image and README install the same CPU torch, each variant from an index a build argument names
    readme_torch = re.search(r"pip install (torch==[\d.]+)", (REPO / "README.md").read_text()).group(1)
    for stage, index in (("runtime-cpu", "https://download.pytorch.org/whl/cpu"),
                         ("runtime-gpu", "https://download.pytorch.org/whl/cu126")):
        args = {a.split("=")[0]: a.split("=", 1)[1] for st, op, a in instructions()
                if st == stage and op == "ARG" and "=" in a}
        assert f"torch=={args['TORCH_VERSION']}" == readme_torch and args["TORCH_INDEX"] == index
        runs = " ".join(a for st, op, a in instructions() if st == stage and op == "RUN")
        assert '--index-url "${TORCH_INDEX}"' in runs


def test_no_frontend_image_is_pulled_before_building():
    assert "syntax=" not in (REPO / "Dockerfile").read_text().splitlines()[0]


def test_python_versions_meet_requires_python():
    minimum = tuple(int(x) for x in PYPROJECT["project"]["requires-python"].lstrip(">=").split("."))
    args = {a.split("=")[0]: a.split("=", 1)[1] for st, op, a in instructions() if op == "ARG" and "=" in a}
    slim = re.search(r"python:(\d+)\.(\d+)", args["PYTHON_IMAGE"])
    assert (int(slim[1]), int(slim[2])) >= minimum
    ubuntu = re.search(r"ubuntu(\d+\.\d+)", args["CUDA_IMAGE"]).group(1)
    ubuntu_python = {"22.04": (3, 10), "24.04": (3, 12)}[ubuntu]  # python3 of that release
    assert ubuntu_python >= minimum
    apt = " ".join(a for st, op, a in instructions() if st == "runtime-gpu" and op == "RUN" and "apt-get" in a)
    assert "python3-venv" in apt and "rm -rf /var/lib/apt/lists/*" in apt


def test_bundled_model_baked_in_non_root_health_and_state_volume():
    ins = instructions()
    final = [(op, a) for st, op, a in ins if st == "final"]
    wheel_copies = [a for st, op, a in ins if st == "wheel" and op == "COPY"]
    assert "models models" in wheel_copies  # models/bundled/ped2.onnx is package data of the wheel
    assert "bundled/*.onnx" in PYPROJECT["tool"]["setuptools"]["package-data"]["amvad.models"]
    ignore = [ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    for needed in ("models/bundled/ped2.onnx", "service/static", "pyproject.toml", "README.md"):
        assert not any(fnmatch.fnmatch(needed, p) or needed.startswith(p.rstrip("/") + "/") for p in ignore), needed
    user = [a for op, a in final if op == "USER"]
    assert user and user[-1] not in ("root", "0")
    (health,) = [a for op, a in final if op == "HEALTHCHECK"]
    assert "/healthz" in health
    env = " ".join(a for op, a in final if op == "ENV")
    state = re.search(r"AMVAD_STATE_DIR=(\S+)", env).group(1)
    assert any(state in a for op, a in final if op == "VOLUME")
    (entry,) = [a for op, a in final if op == "ENTRYPOINT"]
    assert ["amvad", "serve", "--host", "0.0.0.0"] == json.loads(entry)[:4]
    from_lines = [a for st, op, a in ins if op == "FROM"]
    assert any("${CUDA_IMAGE}" in f for f in from_lines) and from_lines[-1].startswith("runtime-${VARIANT}")


def test_compose_stack_is_consistent():
    compose = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"amvad", "amvad-gpu", "camera", "prometheus", "alertmanager", "grafana"} <= services.keys()
    gpu = services["amvad-gpu"]
    assert gpu["profiles"] == ["gpu"] and "amvad" in gpu["networks"]["default"]["aliases"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    env_profiles = (DEPLOY / ".env").read_text()
    assert "COMPOSE_PROFILES=cpu" in env_profiles and services["amvad"]["profiles"] == ["cpu"]
    assert "AMVAD_API_KEY:?" in (DEPLOY / "compose.yaml").read_text()  # refuses to start without a key
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), src
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    prom = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["amvad:8000"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    amvad_cfg = load_yaml(DEPLOY / "amvad" / "service.yaml")
    assert amvad_cfg["cameras"][0]["url"] == "rtsp://camera:8554/demo"
    assert "rtsp://localhost:8554/demo" in (DEPLOY / "camera" / "mediamtx.yml").read_text()
    assert (REPO / "service" / "samples" / "ped2_test01.mp4").is_file()
