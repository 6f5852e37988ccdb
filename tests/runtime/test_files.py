"""Atomic writes: the old file or the new one, never half of one, with the permissions asked for."""

from __future__ import annotations

import stat

import pytest

from amvad.runtime.files import atomic_path, write_atomic


def test_write_replaces_in_one_step_with_the_given_mode(tmp_path):
    path = tmp_path / "sub" / "secret.json"
    write_atomic(path, '{"a": 1}', mode=0o600)
    assert path.read_text() == '{"a": 1}' and stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new" and [p.name for p in path.parent.iterdir()] == ["secret.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("good")
    with pytest.raises(RuntimeError, match="check failed"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("check failed")
    assert path.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
