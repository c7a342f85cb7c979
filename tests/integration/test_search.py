"""Search features end to end on phantom data, through the real CLI, Ray, Optuna and MLflow:
a multi-objective study (NSGA-II) and ASHA early stopping that is recorded honestly.

Ray: every study joins the session's shared cluster (conftest.py, `--address`; 2 CPUs).

Budget: about 1.5 min (a Ray Train worker group starts per trial, 10-15 s here).
"""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml
from helpers import run_cli

from study.search import ConditionalGridSampler
from study.space import Param

pytestmark = pytest.mark.integration


def _base(tmp, tiny_phantom, epochs):
    return {
        "model": {"name": "unet", "width": 0.125},
        "data": {"dataset": "phantom", "root": str(tmp / "phantom"), "input_size": [32, 24], "phantom": tiny_phantom},
        "train": {"epochs": epochs, "batch_size": 4},
    }


def _runs(tmp, name):
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'store' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[name])
    return runs[runs["tags.study.role"] == "trial"], runs[runs["tags.study.role"] == "study"]


def test_multi_objective_study(tmp_path, tiny_phantom, ray_cluster):
    spec = {
        "study": {
            "name": "mo",
            "trials": 3,
            "concurrency": 2,
            "sampler": "nsga2",
            "seed": 0,
            "storage": str(tmp_path / "store"),
            "objectives": [{"metric": "val/mre_mm", "mode": "min"}, {"metric": "cost/gflops", "mode": "min"}],
        },
        "base": _base(tmp_path, tiny_phantom, epochs=2),
        "space": {"model.width": {"choice": [0.125, 0.25]}, "optim.lr": {"loguniform": [1e-3, 1e-2]}},
    }
    path = tmp_path / "mo.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = run_cli(str(path), "--address", ray_cluster["address"], cwd=tmp_path, env=ray_cluster["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # no early stopping by default with several objectives; progress shows the best of each
    assert "scheduler none" in proc.stdout and "min val/mre_mm, min cost/gflops" in proc.stdout
    assert "| best val/mre_mm=" in proc.stdout and " cost/gflops=" in proc.stdout
    trials, parents = _runs(tmp_path, "mo")
    assert len(trials) == 3 and set(trials["tags.trial.status"]) == {"finished"}
    assert parents.iloc[0]["params.study.objectives"] == "val/mre_mm (min), cost/gflops (min)"
    # cost/gflops follows the searched width: both objectives reached Optuna through Tune
    gflops = trials.groupby("params.model.width")["metrics.cost/gflops"].first()
    if len(gflops) == 2:
        assert gflops["0.25"] > gflops["0.125"]
    summary = parents.iloc[0]
    assert summary["metrics.best/val/mre_mm"] == pytest.approx(trials["metrics.val/mre_mm"].min())
    assert summary["metrics.best/cost/gflops"] == pytest.approx(trials["metrics.cost/gflops"].min())
    # the study remembers the spec it ran, for --resume
    saved = json.loads((tmp_path / "store" / "mo" / "study.json").read_text())
    assert [o["metric"] for o in saved["resolved"]["study"]["objectives"]] == ["val/mre_mm", "cost/gflops"]


def _seed_in_increasing_cost(widths):
    """A grid seed that runs the widths narrowest first, so each trial trails the earlier ones at
    rung 1 (ASHA's cutoff there is the median of the values recorded so far)."""
    param = Param("model.width", "choice", widths)
    for seed in range(100):
        if [p["model.width"] for p in ConditionalGridSampler({"model.width": param}, seed).points] == sorted(widths):
            return seed
    raise AssertionError("no seed orders the widths")


def test_asha_stops_trailing_trials_and_says_so(tmp_path, tiny_phantom, ray_cluster):
    # The primary objective is cost/gflops, which depends only on model.width: ASHA's decision at
    # epoch 1 is then known in advance. One trial at a time, cheapest first: each later one trails
    # those before it at the first rung and is stopped there. Each trial asks for every CPU of
    # the cluster, so a stopped trial that did not give its CPUs back would stall the next one.
    widths = [0.125, 0.25, 0.5]
    spec = {
        "study": {
            "name": "asha",
            "trials": 3,
            "concurrency": 1,
            "sampler": "grid",
            "seed": _seed_in_increasing_cost(widths),
            "storage": str(tmp_path / "store"),
            "objectives": [{"metric": "cost/gflops", "mode": "min"}],
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        },
        "resources": {"workers": 1, "cpus_per_worker": ray_cluster["cpus"]},
        "base": _base(tmp_path, tiny_phantom, epochs=3),
        "space": {"model.width": {"choice": widths}},
    }
    path = tmp_path / "asha.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = run_cli(str(path), "--address", ray_cluster["address"], cwd=tmp_path, env=ray_cluster["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("stopped early at epoch 1") == 2, proc.stdout[-4000:]
    trials, _ = _runs(tmp_path, "asha")
    status = dict(zip(trials["params.model.width"], trials["tags.trial.status"]))
    assert status == {"0.125": "finished", "0.25": "stopped early", "0.5": "stopped early"}
    client = mlflow.tracking.MlflowClient()
    for run_id, width in zip(trials["run_id"], trials["params.model.width"]):
        steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
        assert steps == ([1, 2, 3] if width == "0.125" else [1])  # their last value is what Optuna got
    # the final table says it too
    table = proc.stdout.split("trials, best first:")[1].split("\n\n")[0]  # up to the front below it
    assert table.count("stopped early") == 2 and table.count("finished") == 1


def test_a_two_worker_trial_trains_with_ddp_through_ray_train(tmp_path, tiny_phantom, ray_cluster):
    spec = {
        "study": {"name": "ddp", "trials": 1, "scheduler": "none", "storage": str(tmp_path / "store")},
        "resources": {"workers": 2, "cpus_per_worker": 1},
        "base": _base(tmp_path, tiny_phantom, epochs=2),
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = run_cli(str(path), "--address", ray_cluster["address"], cwd=tmp_path, env=ray_cluster["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "up to 1 at a time" in proc.stdout  # 2 CPUs hold one 2-worker trial
    trials, _ = _runs(tmp_path, "ddp")
    assert len(trials) == 1 and trials.iloc[0]["tags.trial.status"] == "finished"
    assert trials.iloc[0]["metrics.cost/workers"] == 2.0  # the trainer saw a 2-rank process group
    assert trials.iloc[0]["metrics.val/mre_mm"] > 0
