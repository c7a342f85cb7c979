"""The tree is laid out by `ruff format` and passes `ruff check` (configured in pyproject.toml).

Fix a failure with `python -m ruff format .` and `python -m ruff check --fix .` at the repository
root, then by hand for what --fix leaves. ruff skips what .gitignore names (.venv/, studies/, ...).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is not installed (pip install -e '.[test]' brings it)"
)


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_check_passes():
    run = _ruff("check", "--no-cache", ".")
    assert run.returncode == 0, f"ruff check found problems:\n{run.stdout[-8000:]}{run.stderr[-2000:]}"


def test_ruff_format_leaves_the_tree_as_it_is():
    run = _ruff("format", "--check", "--no-cache", ".")
    assert run.returncode == 0, (
        f"ruff format would change files (run `python -m ruff format .`):\n{run.stdout[-8000:]}{run.stderr[-2000:]}"
    )
