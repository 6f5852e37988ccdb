"""``amvad`` itself: ``--help`` and argument errors parse with argparse alone (no torch, no service, no
training imported), and ``fit`` takes either footage with ``--out`` or a job folder."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from amvad.cli.main import main

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "onnxruntime", "pydantic", "matplotlib", "av", "service", "training", "runtime")


def imported_after(argv: list[str]) -> tuple[int, list[str]]:
    """(exit status, heavy modules imported) of ``main(argv)`` in a fresh interpreter."""
    code = textwrap.dedent(f"""
        import json, sys
        from amvad.cli.main import main
        try:
            status = main({argv!r})
        except SystemExit as exc:
            status = exc.code
        print(json.dumps([status, sorted(m for m in {HEAVY!r} if m in sys.modules)]))
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    return status, heavy


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["serve", "--help"], ["fit", "--minutes", "x"],
                                  ["no-such-command"]])
def test_help_and_argument_errors_import_nothing_heavy(argv):
    status, heavy = imported_after(argv)
    assert status in (0, 2) and heavy == []


def test_python_m_cli_help_prints_the_commands():
    out = subprocess.run([sys.executable, "-m", "amvad.cli", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: amvad")
    for command in ("train", "fit", "eval", "export", "flow-check", "speed", "serve", "bench"):
        assert command in out.stdout


def test_fit_takes_footage_with_out_or_a_job_folder(tmp_path, capsys):
    assert main(["fit", str(tmp_path), "--quiet"]) == 2
    assert "give the footage and --out PATH.onnx (or --job DIR)" in capsys.readouterr().err
    assert main(["fit", "--job", str(tmp_path), str(tmp_path), "--quiet"]) == 2
    assert "--job DIR takes no footage or --out" in capsys.readouterr().err
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "m.onnx"), "--minutes", "0", "--quiet"]) == 2
    assert "--minutes: Input should be greater than 0" in capsys.readouterr().err


def test_a_job_folder_without_a_request_is_an_error_recorded_in_its_progress(tmp_path, capsys):
    assert main(["fit", "--job", str(tmp_path), "--quiet"]) == 2
    assert "request.json" in capsys.readouterr().err
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["stage"] == "failed" and progress["error"]["kind"] == "input"
    assert progress["error"]["type"] == "FileNotFoundError"


def test_export_options_that_retake_the_threshold_need_the_footage(tmp_path, capsys):
    # a flow span changes the scores, so it is set only where the statistics are taken again
    assert main(["export", "--onnx", "ped2", "--out", str(tmp_path / "m.onnx"), "--flow-span", "3"]) == 2
    assert "--flow-span and --speed-weight go with --condition-on" in capsys.readouterr().err
    assert main(["export", "--onnx", "ped2", "--out", str(tmp_path / "m.onnx"), "--speed-weight", "4"]) == 2
    assert "--speed-weight go with --condition-on" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
