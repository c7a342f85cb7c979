"""Joining a `ray start` cluster that wants Ray's token (the session's cluster, tests/integration/
conftest.py, runs with token authentication): the study finds the token itself, and says in one
line when it has none or the wrong one, before anything starts and in well under 15 s, instead of
Ray's half minute of retries and warnings that never name the token.

Budget: ~10 s (three driver start-ups; no trial runs).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import clean_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict:
    """No RAY_AUTH_MODE, and a home of its own: no ~/.ray/auth_token unless the test writes one."""
    env = clean_env(HOME=str(tmp_path / "home"), **extra)
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    env.update(extra)
    return env


def _study(tmp_path: Path, address: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    spec = tmp_path / "s.yaml"
    spec.write_text(f"study: {{name: tok, storage: {tmp_path / 'store'}, trials: 1}}\nbase:\n  train: {{epochs: 1}}\n")
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "study.run", str(spec), "--address", address],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return run, time.monotonic() - t0


def test_without_the_token_the_study_says_so_in_one_line(ray_cluster, tmp_path):
    run, seconds = _study(tmp_path, ray_cluster["address"], _env(tmp_path))
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    problems = [line.strip() for line in run.stderr.splitlines()[1:]]
    assert problems == [
        f"--address {ray_cluster['address']}: the Ray cluster there wants its token (Ray's token "
        f"authentication); give it with RAY_AUTH_TOKEN=..., RAY_AUTH_TOKEN_PATH=FILE or the head's "
        f"~/.ray/auth_token copied here"
    ], run.stderr
    assert "Failed to get cluster ID" not in run.stdout + run.stderr
    assert seconds < 15, seconds
    assert not (tmp_path / "store").exists()


def test_a_wrong_token_is_named(ray_cluster, tmp_path):
    run, seconds = _study(tmp_path, ray_cluster["address"], _env(tmp_path, RAY_AUTH_TOKEN="not-this-clusters"))
    assert run.returncode == 2 and "refuses the token in RAY_AUTH_TOKEN" in run.stderr, run.stderr
    assert seconds < 15, seconds


@pytest.mark.parametrize("where", ["env", "home file"])
def test_the_token_is_used_without_ray_auth_mode(ray_cluster, tmp_path, where):
    token = ray_cluster["env"]["RAY_AUTH_TOKEN"]
    env = _env(tmp_path, **({"RAY_AUTH_TOKEN": token} if where == "env" else {}))
    if where == "home file":
        (tmp_path / "home" / ".ray").mkdir(parents=True)
        (tmp_path / "home" / ".ray" / "auth_token").write_text(token)
    code = (
        f"from study.cluster import init_ray; import ray; init_ray({ray_cluster['address']!r}, False, False); "
        "print('cpus', ray.cluster_resources()['CPU'])"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"joined Ray cluster at {ray_cluster['address']}" in run.stdout and "cpus 2.0" in run.stdout
