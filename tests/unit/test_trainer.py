"""The shared trainer runs standalone (no Ray), reports per epoch, and resumes exactly."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables import ConfigError, TrialConfig, fit
from trainables.config import apply_overrides
from trainables.trainer import CHECKPOINT_FILE
from trainables.metrics import reported_metrics


class Recorder:
    """A `report` callable that keeps the metrics and copies each checkpoint (valid only during the call)."""

    def __init__(self, keep_dir: Path):
        self.metrics, self.checkpoints, self.keep_dir = [], [], keep_dir

    def __call__(self, metrics, checkpoint_dir):
        self.metrics.append(dict(metrics))
        if checkpoint_dir is not None:
            dest = self.keep_dir / f"epoch{metrics['epoch']}"
            shutil.copytree(checkpoint_dir, dest)
            self.checkpoints.append(dest)


def test_fit_reports_every_epoch_with_a_checkpoint(tiny_config, tmp_path):
    rec = Recorder(tmp_path / "kept")
    last = fit(TrialConfig.from_dict(tiny_config), rec)
    assert [m["epoch"] for m in rec.metrics] == [1, 2]
    assert set(rec.metrics[0]) == set(reported_metrics()) | {"epoch"}
    assert last == rec.metrics[-1]
    assert all(m["val/mre_mm"] > 0 and 0 <= m["val/sdr_2mm"] <= 100 for m in rec.metrics)
    state = torch.load(rec.checkpoints[-1] / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2 and set(state) >= {"model", "optimizer", "schedule", "rng"}


def test_training_lowers_the_loss(tiny_config, tmp_path):
    cfg = TrialConfig.from_dict(apply_overrides(tiny_config, {"train.epochs": 6}))
    rec = Recorder(tmp_path / "kept")
    fit(cfg, rec)
    losses = [m["train/loss"] for m in rec.metrics]
    assert losses[-1] < 0.5 * losses[0]


def test_resume_from_a_checkpoint_continues_exactly(tiny_config, tmp_path):
    # Three epochs straight vs one epoch, then a restart from that epoch's checkpoint: same numbers.
    cfg3 = TrialConfig.from_dict(apply_overrides(tiny_config, {"train.epochs": 3}))
    straight = Recorder(tmp_path / "a")
    fit(cfg3, straight)
    first = Recorder(tmp_path / "b")
    fit(TrialConfig.from_dict(apply_overrides(tiny_config, {"train.epochs": 1})), first)
    resumed = Recorder(tmp_path / "c")
    fit(cfg3, resumed, resume_from=first.checkpoints[-1])
    assert [m["epoch"] for m in resumed.metrics] == [2, 3]
    for a, b in zip(straight.metrics[1:], resumed.metrics):
        for key in ("train/loss", "val/loss", "val/mre_mm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_fit_refuses_a_bad_config_before_training(tiny_config):
    cfg = TrialConfig.from_dict(apply_overrides(tiny_config, {"loss.type": "l7"}))
    with pytest.raises(ConfigError, match=r"loss.type: unknown 'l7'; choose one of \['mse'\]"):
        fit(cfg, lambda m, c: pytest.fail("must not report"))


def test_trainables_does_not_import_ray_or_mlflow():
    # Layer rule: only trainables/ray_adapter.py may know about Ray; nothing here knows MLflow.
    code = (
        "import sys, trainables, trainables.trainer, trainables.data, trainables.models;"
        "bad = [m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
