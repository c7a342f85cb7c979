"""study.repeats end to end: the real CLI, Ray, real Optuna, a real MLflow SQLite store.

Ray: the grouped case joins the session's shared cluster (conftest.py, `--address`); the killed case
starts a local Ray of its own, whose driver it kills.

1. A grid of 2 configurations (fixed σ, Adaloss) × 2 repeats, 2 epochs: MLflow holds 4 trial runs,
   grouped by `config.id` with `config.repeat` 0 and 1 and train.seed base + repeat; Optuna holds 2
   trials, each told the mean of its repeats' final val/mre_mm (as MLflow holds them).
2. One configuration × 3 repeats, one trial at a time, SIGKILL of the driver while the second repeat
   trains (the group is half handed out: 2 of 3), then --resume: the second repeat continues, the
   third is handed out with the same configuration, no repeat is run twice or lost, and Optuna
   holds one trial with the mean of the three.

Budget: 7 Train worker-group starts, 3 CLI and 2 local Ray start-ups; the two cases run side by side
(one thread each, as test_resume.py does): 6 min here on the shared 2-core machine (3 passed).
"""

from __future__ import annotations

import re
import signal
import threading
from functools import partial
from pathlib import Path

import pytest
import yaml
from helpers import Runs, StudyProcess, optuna_study

pytestmark = pytest.mark.integration

# a trial's epoch line when each configuration is repeated: trial, config, repeat, of repeats, epoch, of epochs
REPEAT_EPOCH = re.compile(r"^\[\d+:\d\d\] epoch\s+([0-9a-f]{8}) \(config (\d+), repeat (\d+)/(\d+)\)\s+(\d+)/(\d+)\s")


def repeats_spec(tmp: Path, name: str, phantom: dict, **study) -> Path:
    spec = {
        "study": {
            "name": name,
            "seed": 7,
            "scheduler": "none",
            "storage": str(tmp / "store"),
            "objectives": [{"metric": "val/mre_mm", "mode": "min"}],
            **study,
        },
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "base": {
            "model": {"name": "unet", "width": 0.125},
            "data": {"dataset": "phantom", "root": str(tmp / "phantom"), "input_size": [32, 24], "phantom": phantom},
            "target": {"sigma": 2.5},
            "optim": {"lr": 3e-3},
            "train": {"epochs": 2, "batch_size": 4, "seed": 10},
            "loss": {"type": "ewc"},
            "eval": {"decode": "subpixel", "split": "test2", "preview": 0},
        },
        "space": {"target.schedule": {"choice": ["fixed", "adaloss"]}},
    }
    if name == "killed":
        spec["base"]["train"]["epochs"] = 4
        spec["space"] = {"optim.lr": {"loguniform": [1e-3, 1e-2]}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def repeat_runs(uri: str, name: str) -> list[dict]:
    """The MLflow trial runs of study `name`, each with its configuration, repeat, seed and epochs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    out = []
    for run in runs:
        tags = run.data.tags
        if tags.get("study.role") == "trial":
            out.append(
                {
                    "trial": tags["tune.trial_id"],
                    "config": tags.get("config.id"),
                    "repeat": tags.get("config.repeat"),
                    "seed": run.data.params.get("train.seed"),
                    "outcome": tags.get("trial.status"),
                    "params": dict(run.data.params),
                    "val/mre_mm": run.data.metrics.get("val/mre_mm"),
                    "epochs": [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")],
                }
            )
    return out


def grid_case(tmp: Path, phantom: dict, runs: Runs, cluster: dict) -> dict:
    spec = repeats_spec(tmp, "grouped", phantom, trials=2, repeats=2, concurrency=2, sampler="grid")
    proc = runs.run("grouped", str(spec), "--address", cluster["address"], cwd=tmp, env=cluster["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    return {
        "proc": proc,
        "runs": repeat_runs(uri, "grouped"),
        "optuna": optuna_study(tmp / "store" / "grouped" / "tune"),
    }


def killed_case(tmp: Path, phantom: dict, runs: Runs, timeout: float = 400) -> dict:
    spec = repeats_spec(tmp, "killed", phantom, trials=1, repeats=3, concurrency=1, sampler="random")
    p = StudyProcess(str(spec), cwd=tmp, runs=runs, label="the killed case's study")
    # until the second repeat (repeat 2/3) printed its epoch 2
    p.wait_for(
        lambda line: (m := REPEAT_EPOCH.match(line)) and m[3] == "2" and m[5] == "2",
        timeout,
        "the second repeat's epoch 2",
    )
    p.send(signal.SIGKILL)  # SIGKILL of the driver only; then what it started, as test_resume does
    p.wait(timeout=60)
    p.kill()
    (tmp / "killed.log").write_text(p.output)
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    before = repeat_runs(uri, "killed")
    resumed = runs.run("resume", str(spec), "--resume", cwd=tmp)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return {
        "first": p.output,
        "before": before,
        "resumed": resumed,
        "runs": repeat_runs(uri, "killed"),
        "optuna": optuna_study(tmp / "store" / "killed" / "tune"),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory, tiny_phantom, ray_cluster):
    runs = {name: Runs() for name in ("grid", "killed")}
    results: dict[str, object] = {}
    work = {"grid": partial(grid_case, cluster=ray_cluster), "killed": killed_case}

    def go(name):
        try:
            results[name] = work[name](tmp_path_factory.mktemp(f"repeats-{name}"), tiny_phantom, runs[name])
        except BaseException as e:  # pytest.fail raises an OutcomeException (a BaseException)
            results[name] = e

    threads = [threading.Thread(target=go, args=(n,), daemon=True) for n in work]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=1200)
        yield results
    finally:
        for r in runs.values():
            r.cleanup()


def case(cases, name):
    result = cases.get(name)
    if result is None or isinstance(result, BaseException):
        pytest.fail(f"the {name} case failed: {result!r}", pytrace=False)
    return result


def test_repeats_are_grouped_by_configuration_with_their_seeds(cases):
    got = case(cases, "grid")
    runs = got["runs"]
    assert len(runs) == 4 and len({r["trial"] for r in runs}) == 4
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["config"], []).append(r)
    assert len(groups) == 2
    for cid, group in groups.items():
        assert cid in {r["trial"] for r in group}  # a configuration's id is its first repeat's trial id
        assert sorted((r["repeat"], r["seed"]) for r in group) == [("0", "10"), ("1", "11")]
        assert len({r["params"]["target.schedule"] for r in group}) == 1
        assert all(r["outcome"] == "finished" and r["epochs"] == [1, 2] for r in group)
    assert {g[0]["params"]["target.schedule"] for g in groups.values()} == {"fixed", "adaloss"}
    out = got["proc"].stdout
    assert "2 configurations × 2 repeats = 4 trials" in out
    assert re.search(r"finished  [0-9a-f]{8} \(config [12], repeat 2/2\)  \(\d/4 trials done", out), out[-3000:]


def test_optuna_learns_each_configurations_mean(cases):
    got = case(cases, "grid")
    ot_trials = got["optuna"].get_trials(deepcopy=False)
    assert len(ot_trials) == 2  # one Optuna trial per configuration, not per repeat
    by_schedule: dict[str, list[float]] = {}
    for r in got["runs"]:
        by_schedule.setdefault(r["params"]["target.schedule"], []).append(r["val/mre_mm"])
    for t in ot_trials:
        values = by_schedule[t.params["target.schedule"]]
        assert t.values[0] == pytest.approx(sum(values) / len(values), rel=1e-9)


def test_a_killed_half_handed_out_group_completes_after_resume_without_duplicates(cases):
    got = case(cases, "killed")
    before = got["before"]
    assert sorted(r["repeat"] for r in before) == ["0", "1"]  # the third repeat was not handed out yet
    runs = got["runs"]
    assert len(runs) == 3 and len({r["trial"] for r in runs}) == 3  # one run per repeat, none duplicated
    assert sorted((r["repeat"], r["seed"]) for r in runs) == [("0", "10"), ("1", "11"), ("2", "12")]
    assert len({r["config"] for r in runs}) == 1 and len({r["params"]["optim.lr"] for r in runs}) == 1
    assert all(r["outcome"] == "finished" and r["epochs"] == [1, 2, 3, 4] for r in runs)
    # the second repeat went on from its checkpoint; only the third started afresh
    second = next(r["trial"] for r in before if r["repeat"] == "1")
    out = got["resumed"].stdout
    assert f"epoch  {second} (config 1, repeat 2/3)  1/4" not in out, out[-3000:]
    assert "(config 1, repeat 1/3)" not in out  # the finished first repeat is not run again
    ot_trials = got["optuna"].get_trials(deepcopy=False)
    assert len(ot_trials) == 1 and ot_trials[0].values[0] == pytest.approx(
        sum(r["val/mre_mm"] for r in runs) / 3, rel=1e-9
    )
