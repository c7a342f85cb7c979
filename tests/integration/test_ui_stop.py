"""`python -m dashboards.ui` stops the whole `mlflow ui` tree on SIGTERM, not only the process it started.

A real UI on a free loopback port, on a SQLite store made here. Once /health answers, the test
notes the server's tree (MLflow 3: uvicorn workers, a job runner, huey consumers, in the server's
own session), sends SIGTERM to our process, and checks that it exits 0 with none of that tree left
and the port closed. Ctrl-C raises KeyboardInterrupt, which takes the same path. Every wait is a
bounded poll; whatever is left at the end is killed by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port

from dashboards.ui import processes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc"),
]

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300  # /health answered after 46-106 s on the loaded 2-core machine (14 processes start)
STOP_TIMEOUT_S = 60  # the UI's own bound is a 10 s grace, then SIGKILL


def _poll(what: str, timeout_s: float, check):
    """check() until it returns something truthy (-> it), at most timeout_s; fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout_s} s")


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tree_of(root: int) -> set[int]:
    """Live processes in root's process group or below it."""
    table = processes()
    below, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, (state, ppid, _) in table.items() if ppid in frontier and state != "Z"} - below
        below |= frontier
    return below | {pid for pid, (state, _, group) in table.items() if group == root and state != "Z"}


def test_sigterm_stops_the_server_and_all_its_children(tmp_path):
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(store).create_experiment("x")
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "dashboards.ui", "--tracking-uri", store, "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tree: set[int] = set()
    try:

        def server_pid():
            assert ui.poll() is None, ui.stdout.read()
            children = [pid for pid, (_, ppid, _) in processes().items() if ppid == ui.pid]
            return children[0] if children else None

        server = _poll("the mlflow server started by dashboards.ui", 30, server_pid)
        assert processes()[server][2] == server != processes()[ui.pid][2]  # it leads a group of its own

        def healthy():
            assert ui.poll() is None, ui.stdout.read()
            return _answers(port)

        _poll(f"http://127.0.0.1:{port}/health", START_TIMEOUT_S, healthy)
        tree = _tree_of(server)
        assert len(tree) >= 3, f"expected the server and its workers, found {sorted(tree)}"

        ui.send_signal(signal.SIGTERM)
        out, _ = ui.communicate(timeout=STOP_TIMEOUT_S)
        assert ui.returncode == 0, out
        assert "stopping the MLflow UI" in out

        table = processes()
        left = {pid: table[pid] for pid in tree if pid in table and table[pid][0] != "Z"}
        left |= {pid: v for pid, v in table.items() if v[2] == server and v[0] != "Z"}
        assert not left, f"still running after SIGTERM: {left}"
        assert not _answers(port)
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
        for pid in tree:  # only what this test started, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
