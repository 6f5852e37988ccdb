"""``amvad backup`` and ``amvad restore`` parse with argparse alone, like every command (their work is
tested against real servers in tests/service/test_backup.py)."""

from __future__ import annotations

import pytest

from tests.cli.test_main import imported_after


@pytest.mark.parametrize("argv", [["backup", "--help"], ["restore", "--help"], ["backup"], ["restore"]])
def test_backup_and_restore_help_and_argument_errors_import_nothing_heavy(argv):
    status, heavy = imported_after(argv)
    assert status in (0, 2) and heavy == []
