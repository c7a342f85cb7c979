"""The CLI as a subprocess, the way users run it (shared by the integration tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def clean_env(**extra: str) -> dict:
    """This environment without a tracking server or cluster address the developer may have set,
    plus `extra` (e.g. an object store's AWS_* variables)."""
    return {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}, **extra}


def run_cli(*args: str, cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.run", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)
