"""Every benchmark script runs, on a tiny setting, so that none can rot unseen.

The figures themselves are not checked (benchmarks/README.md holds them); a script that raises,
or a new script without a tiny setting here, fails this test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = {  # script -> arguments that run it in seconds
    "model_cost.py": [
        "--models",
        "unet::0.25",
        "--flops-size",
        "64",
        "64",
        "--train-size",
        "64",
        "64",
        "--batch",
        "1",
        "--steps",
        "1",
    ],
    "render_targets.py": ["--batch", "1", "--rounds", "1", "--threads", "1", "--size", "64", "64", "--landmarks", "2"],
    "checkpoint_bytes.py": ["--improving", "0", "10"],
    "gpu_throughput.py": [
        "--device",
        "cpu",
        "--size",
        "64",
        "64",
        "--batches",
        "1",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--fit-epochs",
        "1",
        "--fit-train",
        "8",
    ],
    "data_check.py": ["--images", "3", "--decode", "1"],
    "platform_overhead.py": [
        "--epochs",
        "1",
        "--trials",
        "1",
        "--concurrency",
        "1",  # starts one local Ray
        "--set",
        "base.data.phantom.num_train=4",
        "--set",
        "base.data.phantom.num_test1=2",
        "--set",
        "base.data.phantom.num_test2=2",
    ],
    "trainer_throughput.py": [
        "--epochs",
        "1",
        "--set",
        "data.phantom.num_train=4",
        "--set",
        "data.phantom.num_test1=2",
        "--set",
        "data.phantom.num_test2=2",
    ],
}


def test_every_benchmark_has_a_tiny_setting():
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
    assert sorted(TINY) == scripts, "give each benchmark script a tiny setting in TINY"


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs(script, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LANDMARK_STUDY_CACHE": str(tmp_path / "cache"),
        "LANDMARK_STUDY_DATA": str(tmp_path / "data"),
    }
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *TINY[script]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"{script} failed:\n{run.stderr[-3000:]}"
    assert run.stdout.strip(), f"{script} printed nothing"
