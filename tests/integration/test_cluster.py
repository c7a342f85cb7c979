"""A study on a real two-node Ray cluster (two raylets on loopback, started by this module), driven
by the real CLI with --address: trials must land on both nodes, and a resource request that no
node (or too few nodes) can serve must be refused before any trial starts.

Budget: the cluster starts in ~5 s; the 2-trial study runs its two Train worker groups side by
side (one per node), ~1 min on a 2-core machine. The two refused runs (~10 s each: imports, join,
exit) run alongside the study rather than after it.

Ray: this module's own two-node cluster (ray.cluster_utils.Cluster), not the session's shared one
(conftest.py): it needs two nodes and a custom resource on one of them.
"""

from __future__ import annotations

import re

import mlflow
import pytest
from helpers import StudyProcess, write_spec

pytestmark = pytest.mark.integration
START = re.compile(r"^\[\d+:\d\d\] start\s", re.MULTILINE)  # a trial started


@pytest.fixture(scope="module")
def cluster():
    """A head node (1 CPU) and a worker node (1 CPU + the custom resource worker_node: 1)."""
    from ray.cluster_utils import Cluster

    c = None
    try:
        c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
        worker = c.add_node(num_cpus=1, resources={"worker_node": 1})
        c.wait_for_nodes(timeout=60)
        yield {
            "cluster": c,
            "address": c.address,
            "head": c.head_node.node_id,
            "worker": worker.node_id,
            "ip": c.head_node.node_ip_address,
        }
    finally:
        if c is not None:
            c.shutdown()


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory, tiny_phantom):
    """The 2-trial study on the cluster, and two specs it must refuse, all three CLIs at once."""
    tmp = {k: tmp_path_factory.mktemp(k) for k in ("study", "gpu_box", "workers")}

    def spec(k: str, **resources):  # the 2-trial study of 2 epochs, any number at once (concurrency 0)
        return write_spec(
            tmp[k] / "twonodes.yaml",
            tmp[k] / "store",
            tiny_phantom,
            epochs=2,
            concurrency=0,
            resources=resources,
            name="twonodes",
        )

    specs = {
        "study": spec("study"),
        "gpu_box": spec("gpu_box"),
        # each of 2 workers needs 1 worker_node, and only the worker node has one: never placeable
        "workers": spec("workers", workers=2, custom={"worker_node": 1}),
    }
    extra = {"gpu_box": ["--set", "resources.custom.gpu_box=1"]}
    procs = {
        k: StudyProcess(
            str(path), "--address", cluster["address"], *extra.get(k, []), cwd=tmp[k], stderr_apart=True, label=k
        )
        for k, path in specs.items()
    }
    try:
        done = {k: p.finish(timeout=400 if k == "study" else 120) for k, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()  # joined an outside cluster: the driver is the only process in its session
    return {k: {"dir": tmp[k], "proc": done[k], "uri": f"sqlite:///{tmp[k] / 'store' / 'mlflow.db'}"} for k in done}


def test_the_cli_joins_the_cluster_and_runs_one_trial_per_node(runs, cluster):
    run = runs["study"]
    proc = run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"joined Ray cluster at {cluster['address']}: 2 CPU, 1 worker_node on 2 node(s)" in out
    assert "2 trials, up to 2 at a time" in out  # concurrency 0: one 1-CPU trial per node
    assert "2 trials (0 failed or diverged)" in out

    mlflow.set_tracking_uri(run["uri"])
    mlruns = mlflow.search_runs(experiment_names=["twonodes"])
    trials = mlruns[mlruns["tags.study.role"] == "trial"]
    assert len(trials) == 2
    assert set(trials["tags.trial.status"]) == {"finished"}
    # Both trials ran at once and each needs a whole node's CPU: one ran on each node.
    assert sorted(trials["tags.ray.node_id"]) == sorted([cluster["head"], cluster["worker"]])
    assert set(trials["tags.ray.node_ip"]) == {cluster["ip"]}  # loopback nodes share one IP
    for tid in trials["tags.tune.trial_id"]:
        assert f"start  {tid}" in out and f"epoch  {tid}  2/2" in out


def test_a_custom_resource_that_no_node_has_is_refused_before_any_trial(runs):
    proc, store = runs["gpu_box"]["proc"], runs["gpu_box"]["dir"] / "store"
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "nothing was started" in proc.stderr
    assert "resources.custom.gpu_box: no node of the cluster has a 'gpu_box' resource" in proc.stderr
    assert "(the cluster: 2 CPU, 1 worker_node on 2 node(s))" in proc.stderr
    assert not START.search(proc.stdout)
    assert not (store / "twonodes" / "tune").exists()
    assert not (store / "twonodes" / "study.json").exists()


def test_more_workers_than_nodes_holding_the_resource_is_refused(runs):
    proc, store = runs["workers"]["proc"], runs["workers"]["dir"] / "store"
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "nothing was started" in proc.stderr
    assert (
        "resources.workers: 2 workers of 1 CPU + 1 worker_node each, but the cluster holds only 1 at once"
        in proc.stderr
    )
    assert not START.search(proc.stdout)
    assert not (store / "twonodes" / "tune").exists()
