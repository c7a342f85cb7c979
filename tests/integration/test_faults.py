"""Faults a real cluster has: a Train worker killed mid-trial, and a second driver started on a
running study. The real CLI, a real local Ray, a real MLflow SQLite store. Ray: each CLI run starts
its own local Ray, not the session's shared cluster (conftest.py): its worker is killed.

One study (1 trial of 12 epochs). When the trial has printed `epoch ... 2/12`:
- a second `study.run` of the same spec is started: it must be refused (exit 2), naming the driver
  that holds the study;
- then the trial's RayTrainWorker process is SIGKILLed (what an OOM kill or a lost node does to
  it): Train restarts the worker group from the latest checkpoint, the trial finishes, every epoch
  is in MLflow exactly once, and the run says it took 1 restart.
The same study with `resources.max_failures: 0` and the same kill: the trial fails at once, and its
MLflow run still gets its best checkpoint so far and its pictures. The two studies run side by side
(one thread each, each its own local Ray).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from helpers import EPOCH, START, Runs, StudyProcess, histories, session_pids, trial_runs, write_spec

pytestmark = pytest.mark.integration

EPOCHS = 12  # long enough that the study still runs while the second driver starts (tens of seconds here)


def _train_worker(sid: int) -> int | None:
    """The pid of the Ray Train worker in the CLI's session (Ray names its process after the actor)."""
    for pid, cmd in session_pids(sid).items():
        if "RayTrainWorker" in cmd:
            return pid
    return None


def _kill_the_worker_after_epoch_2(tmp: Path, spec: Path, runs: Runs, second_driver: bool) -> dict:
    """Run the study; once its trial printed epoch 2, SIGKILL its RayTrainWorker (and, with
    second_driver, start a second study.run of the same spec just before). -> what was seen."""
    p = StudyProcess(str(spec), cwd=tmp, runs=runs)
    out: dict = {"dir": tmp, "uri": f"sqlite:///{tmp / 'store' / 'mlflow.db'}", "driver_pid": p.pid}

    def trial_at_epoch_2(line: str) -> bool:  # the trial: the latest START line's
        m = EPOCH.match(line)
        return bool(m and p.starts and m[1] == p.starts[-1] and int(m[2]) == 2)

    p.wait_for(trial_at_epoch_2, 400, "the trial's `epoch ... 2/N` line")
    out["trial"] = p.starts[-1]
    worker = _train_worker(p.pid)
    assert worker, f"no RayTrainWorker in the driver's session: {session_pids(p.pid)}"
    second: dict = {}  # a second driver of the same study, started while the first one runs
    if second_driver:
        starter = threading.Thread(
            target=lambda: second.update(run=runs.run("second", str(spec), cwd=tmp, timeout=300))
        )
        starter.start()
    os.kill(worker, signal.SIGKILL)
    out["rc"] = p.wait(timeout=600)
    if second_driver:
        starter.join(timeout=400)
        out["second"] = second["run"]
    out["output"] = p.output
    (tmp / "first.log").write_text(out["output"])
    return out


# The two studies: with restarts (a second driver is started on it too), and with max_failures 0.
STUDIES = {
    "faulted": {"second_driver": True, "spec": {}},
    "exhausted": {"second_driver": False, "spec": {"resources": {"max_failures": 0}}},
}


@pytest.fixture(scope="module")
def studies(tmp_path_factory, tiny_phantom):
    """Both 1-trial studies whose worker is killed after epoch 2 (_kill_the_worker_after_epoch_2), side
    by side (one thread each, each its own folder and local Ray); what each saw, or the exception that
    stopped it. Afterwards, what the studies left is stopped."""
    folders = {name: tmp_path_factory.mktemp(name) for name in STUDIES}  # mktemp is not thread-safe
    runs = {name: Runs() for name in STUDIES}
    results: dict[str, object] = {}

    def work(name: str) -> None:
        tmp, how = folders[name], STUDIES[name]
        try:
            spec_path = write_spec(
                tmp / "faults.yaml", tmp / "store", tiny_phantom, epochs=EPOCHS, trials=1, **how["spec"]
            )
            results[name] = _kill_the_worker_after_epoch_2(tmp, spec_path, runs[name], how["second_driver"])
        except BaseException as e:  # pytest.fail raises an OutcomeException (a BaseException)
            results[name] = e

    threads = [threading.Thread(target=work, args=(name,), daemon=True) for name in STUDIES]
    try:
        for t in threads:
            t.start()
        for t in threads:  # every step inside has its own timeout; this only bounds their sum
            t.join(timeout=1800)
        yield results
    finally:
        for r in runs.values():
            r.cleanup()


def _result(studies: dict, name: str) -> dict:
    result = studies.get(name)
    if result is None:
        pytest.fail(f"the {name} study did not finish", pytrace=False)
    if isinstance(result, BaseException):
        pytest.fail(f"the {name} study failed: {type(result).__name__}: {result}", pytrace=False)
    return result


@pytest.fixture
def faulted(studies):
    return _result(studies, "faulted")


@pytest.fixture
def exhausted(studies):
    """The same study with resources.max_failures 0: the first dead worker fails the trial."""
    return _result(studies, "exhausted")


def test_a_second_driver_on_a_running_study_is_refused_and_names_the_holder(faulted):
    second = faulted["second"]
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert "is being run by another driver" in second.stderr
    assert f"pid {faulted['driver_pid']}" in second.stderr and "--break-lock" in second.stderr
    assert not START.search(second.stdout)  # it started nothing


def test_a_killed_worker_restarts_from_its_checkpoint_and_the_trial_finishes(faulted):
    out, trial = faulted["output"], faulted["trial"]
    assert faulted["rc"] == 0, out[-4000:]
    assert f"restarted {trial} from epoch " in out and "(1/3)" in out, out[-4000:]
    assert f"finished  {trial}" in out and "1 trials (0 failed or diverged)" in out


def test_every_epoch_is_in_mlflow_once_and_the_run_counts_the_restart(faulted):
    from mlflow.tracking import MlflowClient

    trials, parents, n = trial_runs(faulted["uri"])
    assert parents == 1 and n == 1
    (t,) = trials.values()
    assert t["outcome"] == "finished" and t["status"] == "FINISHED"
    steps = list(range(1, EPOCHS + 1))
    assert histories(faulted["uri"], trials) == {faulted["trial"]: {"train/loss": steps, "val/mre_mm": steps}}
    tags = MlflowClient(faulted["uri"]).get_run(t["run_id"]).data.tags
    assert tags["trial.restarts"] == "1"
    assert not (Path(faulted["dir"]) / "store" / "resumable" / "driver.lock").exists()  # released at the end


def test_a_trial_whose_restarts_are_used_up_fails_and_keeps_its_best_checkpoint(exhausted):
    from mlflow.tracking import MlflowClient

    out, trial = exhausted["output"], exhausted["trial"]
    assert exhausted["rc"] == 1, out[-4000:]  # every trial failed
    assert f"FAILED {trial}" in out and "1 trials (1 failed or diverged)" in out, out[-4000:]
    assert f"restarted {trial}" not in out
    trials, _, n = trial_runs(exhausted["uri"])
    (t,) = trials.values()
    assert n == 1 and t["outcome"] == "failed" and t["status"] == "FAILED"
    client = MlflowClient(exhausted["uri"])
    names = {a.path for a in client.list_artifacts(t["run_id"], "checkpoint")}
    assert {"checkpoint/checkpoint.pt", "checkpoint/metrics.json"} <= names, names
    saved = json.loads(
        Path(
            client.download_artifacts(t["run_id"], "checkpoint/metrics.json", str(exhausted["dir"] / "dl"))
        ).read_text()
    )
    history = {m.step: m.value for m in client.get_metric_history(t["run_id"], "val/mre_mm")}
    assert saved["epoch"] in history and saved["val/mre_mm"] == min(history.values()), (saved, history)
    assert {a.path for a in client.list_artifacts(t["run_id"], "plots")} >= {"plots/ced.png", "plots/overlays.png"}
