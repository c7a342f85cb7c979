"""A worker node lost mid-trial, on a real two-node Ray cluster whose nodes share no study folder:
`ray start --head` and `ray start --address` on loopback, each with a temp folder of its own
(`--temp-dir`, and TMPDIR for what the trainer stages), the study's storage in an object store
(moto's S3 server, the `s3_store` fixture), MLflow in a SQLite file on the driver's side.

Two trials of EPOCHS epochs run at once, one per node (each node has 1 CPU, each Train worker
needs 1). Once both have printed epoch 2, every process of the worker node is SIGKILLed (the node
is gone, as a preempted machine is). The trial that trained there restarts from its latest
checkpoint, read back from the bucket, on the head once the other trial has freed its CPU, and
finishes; MLflow has every epoch of both trials once, and the trial's run counts the restart.

Ray: this module's own two-node cluster (`cluster` below), not the session's shared one (conftest.py):
one of its nodes is killed.

Budget: ~3 min on a 2-core machine (two nodes start in ~10 s; 3 Train worker-group starts).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    EPOCH,
    NAME,
    StudyProcess,
    clean_env,
    free_port,
    histories,
    kill_session,
    objects,
    ray_start,
    session_pids,
    trial_runs,
    write_spec,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 8  # long enough that both trials still train when the worker node goes
PREFIX = "nodeloss"
RESTARTED = re.compile(r"restarted ([0-9a-f]{8}) from epoch (\d+) \((\d+)/(\d+)\)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_store):
    """The head (1 CPU, temp folder A) and a worker node (1 CPU, temp folder B), both on loopback."""
    tmp = tmp_path_factory.mktemp("nodes", numbered=True)
    # short paths: Ray's unix sockets live in the temp folder and have a ~107-byte limit
    folders = {k: Path(f"/tmp/ls-{k}-{os.getpid()}") for k in ("A", "B")}
    # RAY_AUTH_MODE: `ray start --head` turns on token auth, and the other commands must use it too.
    # The lost trial's new worker group waits for the head's one CPU until the other trial has finished
    # (tens of seconds on a loaded 2-core machine): give it longer than Train's 60 s before it counts
    # as one more failure.
    env = clean_env(**s3_store["env"], RAY_AUTH_MODE="token", RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="300")
    port = free_port()
    sids = []
    try:
        for f in folders.values():
            f.mkdir()
        sids.append(
            ray_start(
                [
                    "--head",
                    "--port",
                    str(port),
                    "--node-ip-address",
                    "127.0.0.1",
                    "--num-cpus",
                    "1",
                    "--include-dashboard",
                    "false",
                    "--temp-dir",
                    str(folders["A"]),
                ],
                {**env, "TMPDIR": str(folders["A"])},
            )
        )
        sids.append(
            ray_start(
                [
                    "--address",
                    f"127.0.0.1:{port}",
                    "--node-ip-address",
                    "127.0.0.1",
                    "--num-cpus",
                    "1",
                    "--temp-dir",
                    str(folders["B"]),
                ],
                {**env, "TMPDIR": str(folders["B"])},
            )
        )
        yield {
            "address": f"127.0.0.1:{port}",
            "env": env,
            "head_sid": sids[0],
            "worker_sid": sids[1],
            "folders": folders,
            "tmp": tmp,
        }
    finally:
        for sid in reversed(sids):
            kill_session(sid)
        for f in folders.values():
            subprocess.run(["rm", "-rf", str(f)], check=False)


@pytest.fixture(scope="module")
def lost(cluster, tiny_phantom, s3_store):
    tmp = cluster["tmp"]
    spec = write_spec(
        tmp / "nodeloss.yaml", f"s3://{s3_store['bucket']}/{PREFIX}", tiny_phantom, epochs=EPOCHS, concurrency=2
    )
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    t0 = time.monotonic()
    p = StudyProcess(str(spec), "--address", cluster["address"], "--tracking-uri", uri, cwd=tmp, env=cluster["env"])
    reached: dict[str, int] = {}  # trial id -> the latest epoch it printed
    out: dict = {"uri": uri, "tmp": tmp}

    def both_trials_trained_2_epochs(line: str) -> bool:
        if m := EPOCH.match(line):
            reached[m[1]] = int(m[2])
        return len(reached) == 2 and min(reached.values()) >= 2

    try:
        p.wait_for(both_trials_trained_2_epochs, 400, "both trials' `epoch ... 2/N` lines")
        on_worker = {pid: cmd for pid, cmd in session_pids(cluster["worker_sid"]).items() if "RayTrainWorker" in cmd}
        assert on_worker, f"no Train worker on the worker node: {session_pids(cluster['worker_sid'])}"
        out["killed_at"] = dict(reached)
        out["t_kill"] = time.monotonic() - t0
        out["worker_node_processes"] = kill_session(cluster["worker_sid"])  # the node is gone
        out["rc"] = p.wait(timeout=500)
        out["t_end"] = time.monotonic() - t0
        out["output"] = p.output
        (tmp / "study.log").write_text(out["output"])
        print(
            f"node loss: worker node killed {out['t_kill']:.0f} s after start at {reached}, "
            f"study ended at {out['t_end']:.0f} s"
        )
        out["objects"] = objects(s3_store, f"{PREFIX}/{NAME}/")
        yield out
    finally:
        p.kill()


def test_each_node_keeps_its_own_temp_folder(cluster, lost):
    # Ray 2.60 takes --temp-dir on a worker node too: each node's session is in its own folder.
    for f in cluster["folders"].values():
        assert (f / "session_latest").exists(), sorted(p.name for p in f.iterdir())


def test_the_trial_on_the_lost_node_restarts_from_its_checkpoint_and_finishes(lost):
    out = lost["output"]
    assert lost["rc"] == 0, out[-4000:]
    restarted = RESTARTED.findall(out)
    assert restarted, out[-4000:]
    tid, epoch, n, of = restarted[0]
    assert int(epoch) >= 2 and (n, of) == ("1", "3"), restarted
    assert f"epoch  {tid}  {EPOCHS}/{EPOCHS}" in out and f"finished  {tid}" in out
    assert "2 trials (0 failed or diverged)" in out


def test_every_epoch_is_in_mlflow_once_and_the_restart_is_counted(lost):
    from mlflow.tracking import MlflowClient

    trials, parents, n = trial_runs(lost["uri"])
    assert parents == 1 and n == 2
    assert {t["outcome"] for t in trials.values()} == {"finished"}
    steps = list(range(1, EPOCHS + 1))
    assert histories(lost["uri"], trials) == {tid: {"train/loss": steps, "val/mre_mm": steps} for tid in trials}
    client = MlflowClient(lost["uri"])
    tags = {tid: client.get_run(t["run_id"]).data.tags for tid, t in trials.items()}
    restarted = {tid for tid, _, _, _ in RESTARTED.findall(lost["output"])}
    assert {tid: tags[tid].get("trial.restarts") for tid in restarted} == {tid: "1" for tid in restarted}
    # `ray.node_id` follows the trial's latest worker group: after the loss both name the one node left, the head
    # (seen here: both tags name one node at the end, though the restarted trial started on the worker node)
    assert len({t["ray.node_id"] for t in tags.values()}) == 1


def test_checkpoints_went_through_the_bucket(lost):
    keys = lost["objects"]
    trials, _, _ = trial_runs(lost["uri"])
    for tid in trials:
        assert any(k.startswith(f"{PREFIX}/{NAME}/train/train_{tid}/checkpoint_") for k in keys), (tid, sorted(keys))
    local = [p for p in Path(lost["tmp"]).rglob("*") if p.name.startswith(("checkpoint_", "experiment_state"))]
    assert local == []
