"""A clean install: the wheel claims one top-level import name, ``amvad``, so a package of the user's called
``models`` (or ``service``, ``cli``, ...: the repository's folder names) neither breaks amvad nor is broken
by it. The wheel is built from a copy of the sources, installed into a fresh venv beside such a package,
and the installed ``amvad`` answers ``--help`` and scores an upload with the bundled model."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.servers import REPO, running_service

pytestmark = pytest.mark.integration
FOLDERS = ("models", "runtime", "training", "service", "cli")


def run(*cmd, cwd: Path) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def build_wheel(src: Path, out: Path) -> Path:
    """A wheel of what is in ``src``, built without touching the network (the build backend is installed)."""
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", out,
        src, cwd=src)
    return next(out.glob("*.whl"))


@pytest.fixture(scope="module")
def amvad_wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("amvad-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return build_wheel(src, tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv; amvad's dependencies come from this interpreter's site-packages as plain path entries
    (not processed as site folders, so the repository's editable install is not seen in there)."""
    root = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", root, cwd=root)
    python = root / "bin" / "python"
    venv_site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=root).strip())
    (venv_site / "host-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return root


def test_the_wheel_claims_only_the_amvad_name(amvad_wheel):
    names = zipfile.ZipFile(amvad_wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"amvad"}
    # the bundled models, pages and sample travel as package data
    assert "amvad/models/bundled/ped2.onnx" in names and "amvad/service/static/review.html" in names
    assert "amvad/service/samples/ped2_test01.mp4" in names and "amvad/training/configs/ped2_comemory.yaml" in names


def test_installed_beside_a_package_named_models(amvad_wheel, venv, tmp_path, sample_mp4):
    # given a user's own package called `models`, installed first, and then the amvad wheel
    user = tmp_path / "user-models"
    (user / "models").mkdir(parents=True)
    (user / "models" / "__init__.py").write_text("WHO = 'the user'\n")
    (user / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=70.1"]\n'
                                         'build-backend = "setuptools.build_meta"\n'
                                         '[project]\nname = "user-models"\nversion = "1.0"\n')
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", build_wheel(user, tmp_path / "user-wheel"), cwd=tmp_path)
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", amvad_wheel, cwd=tmp_path)
    # then both import from the venv, each its own
    where = run(python, "-c", "import models, amvad.models as m; print(models.WHO); print(m.__file__)", cwd=tmp_path)
    who, amvad_models = where.splitlines()
    assert who == "the user" and amvad_models.startswith(str(venv)), where
    # and the installed command answers --help without the repository
    out = run(venv / "bin" / "amvad", "--help", cwd=tmp_path)
    assert "serve" in out and "fit" in out
    # and the installed service scores an uploaded clip with the bundled model
    (tmp_path / "svc").mkdir()
    with running_service(tmp_path / "svc", "ped2", python=str(python)) as svc:
        r = svc.http.post("/v1/clips", params={"wait": "true"},
                          files={"file": ("clip.mp4", sample_mp4.read_bytes(), "video/mp4")}, timeout=300)
        assert r.status_code == 200, r.text
        result = r.json()["result"]
        # (how many frames score depends on the machine's load: a model over its time budget sits some out)
        assert result["frames"] == 30 and any(isinstance(s, float) for s in result["scores"])
