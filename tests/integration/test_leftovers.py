"""Nothing left behind after a driver SIGKILL (issue 14, item 5): the real CLI, a real local Ray, a
real MLflow SQLite store. Ray: the CLI starts its own local Ray, not the session's shared cluster
(conftest.py): what that Ray leaves when its driver is killed is what is tested.

One study (1 trial of 12 epochs, a checkpoint every epoch). When the trial has printed epoch 2 the
driver is SIGKILLed. 10 s later the test looks at what is left in the killed driver's session
(it must not touch it itself): the trial's worker processes must be gone, no checkpoint folder may
appear after that, and what is left (the local Ray's agents) must be stopped by the next
`--resume`, which also removes the checkpoint folders the Train run never registered, and then
finishes the trial with every epoch once in MLflow: epochs whose checkpoints Train registered just
before the kill, and which never reached MLflow, are delivered from the resumed checkpoint's
history.json.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import EPOCH, Runs, StudyProcess, clean_env, histories, session_pids, trial_runs, write_spec

from trainables.checkpoint import registered_checkpoints

pytestmark = pytest.mark.integration

EPOCHS = 12
WATCH_S = 10


def _checkpoints(run_dir):
    return sorted(p.name for p in run_dir.glob("checkpoint_2*") if p.is_dir())


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_phantom):
    tmp = tmp_path_factory.mktemp("leftovers")
    spec = write_spec(
        tmp / "leftovers.yaml", tmp / "store", tiny_phantom, epochs=EPOCHS, trials=1, train={"checkpoint_every": 1}
    )
    runs = Runs()
    try:
        p = StudyProcess(str(spec), cwd=tmp, runs=runs)
        p.wait_for(lambda line: (m := EPOCH.match(line)) and m[2] == "2", 400, "an `epoch ... 2/N` line")
        trial = p.starts[-1] if p.starts else None
        p.send(signal.SIGKILL)
        p.wait(timeout=60)
        t0 = time.monotonic()
        run_dir = tmp / "store" / "resumable" / "train" / f"train_{trial}"
        at_kill = _checkpoints(run_dir)
        samples = []  # (seconds after the kill, live processes, checkpoint folders)
        while (t := time.monotonic() - t0) < WATCH_S:
            samples.append((t, session_pids(p.pid), _checkpoints(run_dir)))
            time.sleep(0.5)
        snapshot = run_dir / "checkpoint_manager_snapshot.json"
        registered = registered_checkpoints(json.loads(snapshot.read_text())) if snapshot.exists() else set()
        orphans = [name for name in _checkpoints(run_dir) if name not in registered]
        resumed = runs.run("resume", str(spec), "--resume", cwd=tmp)
        first = re.search(rf"epoch  {trial}  (\d+)/", resumed.stdout)
        print(
            f"leftovers: {len(at_kill)} checkpoint folder(s) at the kill, {len(samples[-1][2])} {WATCH_S} s later "
            f"({len(registered)} registered, {len(orphans)} not); the resume's first epoch line: "
            f"{first[1] if first else None}"
        )
        uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
        trials, _, n_trial_runs = trial_runs(uri)
        yield {
            "trial": trial,
            "sid": p.pid,
            "at_kill": at_kill,
            "samples": samples,
            "resumed": resumed,
            "left_after_resume": session_pids(p.pid),
            "run_dir": run_dir,
            "orphans": orphans,
            "trials": trials,
            "n_trial_runs": n_trial_runs,
            "histories": histories(uri, trials),
            "runs": runs,
        }
    finally:
        runs.cleanup()


def test_workers_stop_and_stop_writing_checkpoints_once_the_driver_is_gone(killed):
    # A worker checks before each checkpoint that its driver still runs (trainables.ray_adapter.driver_alive:
    # the driver's pid on its node; the GCS's job record, test_a_worker_is_told_when_its_driver_is_gone).
    # Train may still delete an older folder it registered (its num_to_keep); nothing may be added.
    written = {name for _, _, folders in killed["samples"] for name in folders} - set(killed["at_kill"])
    assert not written, killed["samples"]


def test_the_workers_are_gone_10_s_after_the_kill(killed):
    t, procs, folders = killed["samples"][-1]
    assert not [c for c in procs.values() if "RayTrainWorker" in c or "TrainController" in c], procs


def test_what_the_train_run_wrote_after_the_kill_is_removed_or_delivered(killed):
    # A folder written after the kill is either removed by --resume (never registered) or a
    # checkpoint Train registered, whose epochs --resume delivered from its history.json (every
    # epoch once: test_the_trial_finishes_with_every_epoch_once).
    after_kill = set(killed["samples"][-1][2]) - set(killed["at_kill"])
    kept = after_kill & set(_checkpoints(killed["run_dir"]))
    assert not kept & set(killed["orphans"]), (kept, killed["orphans"])
    assert killed["histories"][killed["trial"]]["train/loss"] == list(range(1, EPOCHS + 1))


def test_resume_stops_the_killed_drivers_ray_and_removes_unregistered_checkpoints(killed):
    left = killed["samples"][-1][1]
    out = killed["resumed"].stdout
    assert killed["resumed"].returncode == 0, out[-3000:] + killed["resumed"].stderr[-3000:]
    if left:  # what Ray left running 10 s after the kill (here: its DashboardAgent and RuntimeEnvAgent)
        assert re.search(
            rf"note: stopped \d+ Ray process\(es\) left by the killed driver \(pid {killed['sid']}", out
        ), (left, out[-3000:])
    assert killed["left_after_resume"] == {}
    orphans = killed["orphans"]
    if orphans:  # written by the worker ahead of its controller, which never registered them
        assert f"note: removed {len(orphans)} checkpoint folder(s) that no Train run registered" in out, out[-3000:]
    assert not set(orphans) & set(_checkpoints(killed["run_dir"]))


def test_the_trial_finishes_with_every_epoch_once(killed):
    assert killed["n_trial_runs"] == 1
    steps = list(range(1, EPOCHS + 1))
    assert killed["histories"] == {killed["trial"]: {"train/loss": steps, "val/mre_mm": steps}}
    assert f"epoch  {killed['trial']}  {EPOCHS}/{EPOCHS}" in killed["resumed"].stdout


def test_no_process_of_the_study_outlives_it(killed):
    assert {label: left for label, left in killed["runs"].leftovers.items() if left} == {}


DRIVER = """
import sys, ray
from trainables.ray_adapter import driver_alive

@ray.remote(num_cpus=0)
class Worker:  # stands for a Train worker; detached, so that it outlives its driver's job
    def driver_alive(self):
        return driver_alive()

ray.init(address=sys.argv[1], namespace="leftovers")
w = Worker.options(name="worker", lifetime="detached").remote()
print("alive while the driver runs:", ray.get(w.driver_alive.remote()), flush=True)
"""


def test_a_worker_is_told_when_its_driver_is_gone(tmp_path):
    """driver_alive (the check a Train worker makes before each checkpoint) against a real GCS: True
    while the driver that started the worker runs, False once that driver has ended."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    try:
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER, c.address],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "alive while the driver runs: True" in driver.stdout, driver.stdout + driver.stderr[-3000:]
        ray.init(address=c.address, namespace="leftovers")
        worker = ray.get_actor("worker")
        assert ray.get(worker.driver_alive.remote(), timeout=60) is False
        ray.kill(worker)
    finally:
        ray.shutdown()
        c.shutdown()
