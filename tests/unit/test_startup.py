"""Per-trial start-up: what the processes of a trial that never train must not import.

Every trial's Tune process and its Train controller unpickle `study.trial.trial_driver` and
`trainables.ray_adapter.train_loop_per_worker`, so they import those modules; torch and the trainer
(models, torchvision: seconds per process on a 2-core machine) belong in the Train worker only. A
single-worker trial's controller runs DataParallelTrainer, which needs no torch either
(benchmarks/platform_overhead.py, benchmarks/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_IN_A_TRIALS_OWN_PROCESS = (
    "trainables.trainer",
    "trainables.models",
    "torch",
    "torchvision",
    "mlflow",
    "matplotlib",
)


def _imported_after(statement: str) -> dict:
    code = (
        f"import json, sys; {statement}; "
        f"print(json.dumps({{'modules': [m for m in {NOT_IN_A_TRIALS_OWN_PROCESS!r} if m in sys.modules]}}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_trial_driver_and_the_worker_loop_import_no_trainer():
    got = _imported_after("import study.trial, trainables.ray_adapter")
    assert got["modules"] == [], f"imported by a trial's Tune process and its Train controller: {got['modules']}"


def test_a_train_worker_imports_torchvision_only_for_a_backbone():
    # `import torchvision.models` took 3.2-5.4 s at load 4-5 here; a U-Net trial never needs it.
    got = _imported_after("import trainables.trainer, trainables.ray_adapter, trainables.models")
    assert "torchvision" not in got["modules"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, from copying its context
def test_a_trial_without_ray_datasets_starts_no_dataset_manager():
    # Train's DatasetsCallback starts a DatasetManager actor (a process importing Ray Data) per run,
    # datasets or not; the trainer reads its own files, so a trial leaves it out.
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from study.trial import _trainer_class

    for workers in (1, 2):

        def names(**datasets):
            trainer = _trainer_class(workers)(
                lambda: None, scaling_config=ScalingConfig(num_workers=workers), datasets=datasets or None
            )
            return [type(c) for c in trainer._create_default_callbacks()]

        assert DatasetsCallback not in names(), workers
        assert DatasetsCallback in names(train=[1, 2, 3]), workers  # a user's Ray dataset still gets its shards
