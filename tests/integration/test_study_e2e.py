"""A tiny study end to end: the real CLI, a real Ray, real Optuna, a real MLflow SQLite store and
phantom data in the real ISBI 2015 files. Then the MLflow runs are read back.

Ray: every study run here joins the session's shared cluster (conftest.py, `--address`).

Budget: a Ray Train worker group starts per trial (10-15 s here), so this module takes ~1.5 min.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from helpers import run_cli

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_phantom, ray_cluster):
    """Run a 2-trial study once; the tests below inspect what it left behind."""
    tmp = tmp_path_factory.mktemp("study")
    spec = {
        "study": {
            "name": "tiny",
            "trials": 2,
            "concurrency": 2,
            "seed": 7,
            "storage": str(tmp / "store"),
            "sampler": "grid",
            "scheduler": "none",
            "objectives": [{"metric": "val/mre_mm", "mode": "min"}, {"metric": "val/sdr_4mm", "mode": "max"}],
        },
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "base": {
            "model": {"name": "unet", "width": 0.125},
            "data": {
                "dataset": "phantom",
                "root": str(tmp / "phantom"),
                "input_size": [32, 24],
                "phantom": tiny_phantom,
            },
            "target": {"sigma": 2.5},
            "optim": {"lr": 3e-3},
            "train": {"epochs": 2, "batch_size": 4},
            "loss": {"type": "ewc"},
            "eval": {"decode": "subpixel", "split": "test2", "preview": 2},
        },
        # a grid of two points: one fixed σ, one Adaloss (whose trial also gets the σ picture)
        "space": {"target.schedule": {"choice": ["fixed", "adaloss"]}},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = run_cli(str(path), "--address", ray_cluster["address"], cwd=tmp, env=ray_cluster["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"dir": tmp, "spec": path, "proc": proc, "uri": f"sqlite:///{tmp / 'store' / 'mlflow.db'}"}


def mlflow_runs(uri: str):
    """All runs of study `tiny`, its trial runs and its study run (DataFrames)."""
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    return runs, runs[runs["tags.study.role"] == "trial"], runs[runs["tags.study.role"] == "study"]


def test_one_parent_and_one_child_run_per_trial(study):
    runs, trials, parents = mlflow_runs(study["uri"])
    assert len(parents) == 1 and len(trials) == 2
    parent_id = parents.iloc[0]["run_id"]
    assert set(trials["tags.mlflow.parentRunId"]) == {parent_id}
    assert trials["tags.tune.trial_id"].nunique() == 2
    assert set(trials["status"]) == {"FINISHED"} and set(trials["tags.trial.status"]) == {"finished"}


def test_trial_params_are_the_dotted_config(study):
    _, trials, _ = mlflow_runs(study["uri"])
    assert sorted(trials["params.target.schedule"]) == ["adaloss", "fixed"]  # the two grid points
    assert set(trials["params.optim.lr"]) == {"0.003"} and set(trials["params.train.epochs"]) == {"2"}
    assert set(trials["params.model.name"]) == {"unet"}
    assert set(trials["params.data.input_size"]) == {"32,24"}


def test_per_epoch_metrics_are_logged_with_step_epoch(study):
    _, trials, _ = mlflow_runs(study["uri"])
    client = mlflow.tracking.MlflowClient(study["uri"])
    for run_id in trials["run_id"]:
        for key in ("train/loss", "val/mre_mm", "val/sdr_2mm", "val/auc", "train/loss_lm_18", "target/sigma_0"):
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == [1, 2], key
        # the final test split is scored once, after the last epoch
        assert [m.step for m in client.get_metric_history(run_id, "test/mre_mm")] == [2]
        metrics = client.get_run(run_id).data.metrics
        assert metrics["val/mre_mm"] > 0 and metrics["test/mre_mm"] > 0
        params = client.get_run(run_id).data.params
        if params["target.schedule"] == "fixed":
            assert [m.value for m in client.get_metric_history(run_id, "target/sigma_0")] == [2.5, 2.5]


def test_train_runs_are_named_after_trials_and_checkpointed(study):
    _, trials, _ = mlflow_runs(study["uri"])
    train_dir = study["dir"] / "store" / "tiny" / "train"
    for tid in trials["tags.tune.trial_id"]:
        run_dir = train_dir / f"train_{tid}"
        assert list(run_dir.glob("checkpoint_*/checkpoint.pt")), f"no checkpoint under {run_dir}"
        tables = list(run_dir.glob("checkpoint_*/test_test2_per_landmark.txt"))
        assert len(tables) == 1 and len(tables[0].read_text().splitlines()) == 1 + 19


def test_trial_runs_carry_their_pictures_best_checkpoint_and_pareto_tags(study):
    from PIL import Image

    from dashboards import trial_plots
    from dashboards.ranking import pareto_ranks

    _, trials, _ = mlflow_runs(study["uri"])
    client = mlflow.tracking.MlflowClient(study["uri"])
    values = trials[["metrics.val/mre_mm", "metrics.val/sdr_4mm"]].to_numpy()
    ranks = pareto_ranks(values, ["min", "max"])  # checked against hand-made sets in test_pareto.py
    assert trials["tags.pareto.rank"].tolist() == [str(r) for r in ranks]
    assert trials["tags.pareto.front"].tolist() == ["true" if r == 1 else "false" for r in ranks]
    for _, run in trials.iterrows():
        names = {a.path for sub in ("plots", "checkpoint", "tables") for a in client.list_artifacts(run["run_id"], sub)}
        pictures = {"plots/ced.png", "plots/overlays.png", "plots/heatmaps.png"}
        if run["params.target.schedule"] == "adaloss":
            pictures.add("plots/sigma.png")
        assert names == pictures | {
            "checkpoint/checkpoint.pt",
            "checkpoint/metrics.json",
            "tables/test_test2_per_landmark.txt",
        }, run["params.target.schedule"]
        overlay = Image.open(client.download_artifacts(run["run_id"], "plots/overlays.png", str(study["dir"] / "dl")))
        assert overlay.size == trial_plots.overlay_png_size(2, 32, 24)


def test_the_study_run_carries_the_comparison(study):
    import pandas as pd

    _, trials, parents = mlflow_runs(study["uri"])
    client = mlflow.tracking.MlflowClient(study["uri"])
    parent = parents.iloc[0]["run_id"]
    assert {a.path for a in client.list_artifacts(parent, "pareto")} == {
        "pareto/trials.csv",
        "pareto/trials.parquet",
        "pareto/front.html",
        "pareto/front.png",
    }
    table = pd.read_parquet(client.download_artifacts(parent, "pareto/trials.parquet", str(study["dir"] / "dl")))
    assert sorted(table["trial"]) == sorted(trials["tags.tune.trial_id"])
    assert {"spec.yaml", "study.json", "environment.json"} <= {a.path for a in client.list_artifacts(parent)}
    # two finished trials are too few for fANOVA: the study run says why there is no importance plot
    assert "importance needs at least 3" in client.get_run(parent).data.tags["importance.method"]


def test_the_cli_says_where_results_are(study):
    out = study["proc"].stdout
    assert "2 trials (0 failed or diverged)" in out
    assert "Pareto front of" in out and "pareto.rank" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out and "--host 127.0.0.1" in out
    assert "val/mre_mm" in out and "best" in out


def test_rerun_without_resume_refuses_and_resume_adds_no_runs(study, ray_cluster):
    address, env = ray_cluster["address"], ray_cluster["env"]
    again = run_cli(str(study["spec"]), "--address", address, cwd=study["dir"], env=env)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
    resumed = run_cli(str(study["spec"]), "--resume", "--address", address, cwd=study["dir"], env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs, trials, parents = mlflow_runs(study["uri"])
    assert len(parents) == 1 and len(trials) == 2


def test_a_diverging_trial_is_recorded_as_diverged(tmp_path, tiny_phantom, ray_cluster):
    # SGD at lr 1e8 blows the loss up in the first epoch: the trainer raises, Ray Train fails the
    # run, Tune errors the trial, and MLflow must say so; with every trial failed the CLI exits 1.
    spec = {
        "study": {"name": "diverge", "trials": 1, "storage": str(tmp_path / "store"), "scheduler": "none"},
        "base": {
            "model": {"name": "unet", "width": 0.125},
            "data": {
                "dataset": "phantom",
                "root": str(tmp_path / "phantom"),
                "input_size": [32, 24],
                "phantom": tiny_phantom,
            },
            "optim": {"name": "sgd"},
            "train": {"epochs": 2, "batch_size": 4},
            "loss": {"type": "ewc"},
            "eval": {"decode": "subpixel", "split": "test2"},
        },
        "space": {"optim.lr": {"loguniform": [1e8, 1e9]}},
    }
    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = run_cli(str(path), "--address", ray_cluster["address"], cwd=tmp_path, env=ray_cluster["env"])
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(NaN/inf train/loss)" in proc.stdout and "1 trials (1 failed or diverged)" in proc.stdout
    # one line on the console, no traceback: that stays in the trial's error.txt
    assert "Traceback" not in proc.stdout + proc.stderr and "Trial task failed" not in proc.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["diverge"])
    trial = runs[runs["tags.study.role"] == "trial"]
    assert len(trial) == 1
    assert trial.iloc[0]["status"] == "FAILED" and trial.iloc[0]["tags.trial.status"] == "diverged"
    assert trial.iloc[0]["tags.pareto.front"] == "false" and trial.iloc[0]["tags.pareto.rank"] == "unranked"
    error_files = list((tmp_path / "store" / "diverge" / "tune").glob("*/error.txt"))
    assert error_files and "Diverged" in error_files[0].read_text()
