"""Building and running the service image with podman, as the image test and a user on a plain Debian
machine do: a stand-in ``python:3.11-slim-bookworm`` base made with mmdebstrap (cached), the CPU variant of
the Dockerfile, and containers run as root with the runc runtime on the host network (loopback only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.deploy import REPO

BASE_IMAGE = "localhost/amvad-base:bookworm"
IMAGE = "localhost/amvad:cpu-test"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
BASE_CACHE = Path.home() / ".cache" / "amvad" / "image-base" / "bookworm-minbase.tar"
# runc, not crun (crun refuses cgroups in hybrid mode), and explicit limits (VMs like CI's forbid the
# setrlimit of podman's defaults): what containers need on such machines; harmless elsewhere.
RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                             f"\n{proc.stderr[-3000:]}")
    return proc


def why_podman_cannot_run() -> str | None:
    """None when podman can build and run containers here, else the reason."""
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it from Debian)"
    if os.geteuid() != 0:
        return "the image test runs podman as root (rootless needs subuid ranges set up)"
    info = podman("info", timeout=60, check=False)
    if info.returncode:
        return f"podman cannot run here: {info.stderr.strip()[-300:]}"
    return None


def ensure_base_image() -> None:
    """A minimal Debian bookworm with Python 3.11, standing in for python:3.11-slim-bookworm (no registry
    is reachable). The root file system tarball is cached between runs."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    if not BASE_CACHE.is_file():
        BASE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = BASE_CACHE.with_suffix(".partial.tar")
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
                        str(tmp)], check=True, timeout=900)
        tmp.replace(BASE_CACHE)
    podman("import", str(BASE_CACHE), BASE_IMAGE, timeout=300)


def build_args() -> list[str]:
    """Build arguments for this machine's pip: its CA bundle and local wheel folder (the CPU torch wheel),
    mounted into the build steps only, when the environment names them."""
    args = ["--build-arg", "VARIANT=cpu", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}"]
    cert, links = os.environ.get("PIP_CERT"), os.environ.get("PIP_FIND_LINKS")
    if cert and Path(cert).is_file():
        args += ["--build-arg", "PIP_CERT=/opt/pip-ca.crt", "-v", f"{cert}:/opt/pip-ca.crt:ro"]
    if links and Path(links).is_dir():
        # The CPU torch wheel is in the wheel folder; its dependencies come from PyPI.
        args += ["--build-arg", "PIP_FIND_LINKS=/opt/wheelhouse", "-v", f"{links}:/opt/wheelhouse:ro",
                 "--build-arg", "TORCH_INDEX=https://pypi.org/simple"]
    return args


def build_image() -> None:
    """The CPU image from the repository's Dockerfile, in docker format (OCI drops the HEALTHCHECK)."""
    podman("build", "--format", "docker", "--network", "host", *RUN_FLAGS, *build_args(), "-t", IMAGE, str(REPO),
           timeout=1800)
