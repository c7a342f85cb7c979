"""The Ray cluster that CLI studies join, as cluster users do: one `ray start --head` per test session.

Which tests share it, and why the others keep their own Ray: the studies that test what a study does
join `ray_cluster` with `--address` and its token (test_study_e2e, test_search, test_tracking_server's
served and outage studies, test_repeats' grouped case, test_fidelity_report): each CLI run of theirs
used to start and stop a local Ray of its own, which is start-up time and not what they test. The
tests of what a driver-started Ray does keep their own, since they kill the driver or its workers
and look at what its Ray leaves or does, which a shared cluster must never see: test_resume,
test_faults, test_leftovers, test_disk_full, test_object_store, test_repeats' killed case and
test_ray_start. test_cluster and test_node_loss start multi-node clusters of their own, and the
unreachable-server test ends before any Ray. A joined cluster serves one study after another, so
nothing may depend on being its only job: each study has its own storage folder and MLflow store,
and asks for no more than the cluster's `cpus`.

    def test_x(ray_cluster, tmp_path):
        run_cli(str(spec), "--address", ray_cluster["address"], cwd=tmp_path, env=ray_cluster["env"])
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest
from helpers import clean_env, free_ports, kill_session, ray_start

CLUSTER_CPUS = 2


@pytest.fixture(scope="session")
def ray_cluster():
    """One head node on loopback for the whole session, started the first time a test asks for it.

    Yields {"address": "127.0.0.1:PORT", "env": the token variables a CLI needs to join, "cpus": 2}.
    Token auth with the token in the environment: nothing is written to ~/.ray. Its own temp folder,
    short (Ray's unix sockets there must fit ~107 bytes); its own ports, the Ray Client server's
    included (default 10001, which another test's `ray start --head` would also take).
    """
    folder = Path(f"/tmp/rt-{os.getpid()}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    port, dashboard, client = free_ports(3)
    env = clean_env(
        **auth,
        # one node, nothing to drain: one actor fewer per trial (the CLI's local Ray does the same)
        RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0",
        # Ray Train's placement-group cleaner asks the state API from inside the workers; without this
        # it finds the machine's most recently started Ray's dashboard, maybe another test's local Ray
        RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{dashboard}",
    )
    sid = None
    try:
        sid = ray_start(
            [
                "--head",
                "--port",
                str(port),
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                str(CLUSTER_CPUS),
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dashboard),
                "--ray-client-server-port",
                str(client),
                "--temp-dir",
                str(folder),
                "--disable-usage-stats",
            ],
            env,
        )
        yield {"address": f"127.0.0.1:{port}", "env": auth, "cpus": CLUSTER_CPUS}
    finally:
        if sid is not None:
            kill_session(sid)
        shutil.rmtree(folder, ignore_errors=True)
