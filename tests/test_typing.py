"""The core folders type-check with mypy, as CI runs it: a type error there fails the suite.

The repository root is the ``pdsn`` package itself, so mypy runs from a folder where ``pdsn`` links
to it. Third-party packages without types are taken as they are; an ignore that no longer hides an
error is an error too, so none outlives its reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("runtime", "serve", "model", "export", "calib")


def test_the_core_folders_type_check(tmp_path):
    pytest.importorskip("mypy")
    (tmp_path / "pdsn").symlink_to(ROOT, target_is_directory=True)
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--ignore-missing-imports",
        "--follow-imports=silent",
        "--warn-unused-ignores",
        f"--cache-dir={tmp_path / 'cache'}",
        *(f"pdsn/{folder}" for folder in FOLDERS),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
