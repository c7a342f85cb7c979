"""Open the MLflow UI on a study store, bound to 127.0.0.1 unless you ask otherwise.

    python -m dashboards.ui                                  # the default store: studies/mlflow.db
    python -m dashboards.ui --tracking-uri sqlite:///path/to/mlflow.db --port 5001

Before the server starts it prints, for each study in the store, the link that opens the study's
trial runs with their objectives and costs (dashboards.views.study_url): MLflow 3.17's own start
page is its GenAI overview.

Ctrl-C or SIGTERM stops the server and every process it started. `mlflow ui` is a tree (MLflow 3:
the server, its uvicorn workers, a job runner and its huey consumers, about 14 processes), run
here in a session of its own: Ctrl-C in a terminal reaches only this process, which then stops
the whole group, waits for it, and kills what is still there after a grace period.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainables.procs import stat_fields

STOP_GRACE_S = 10.0  # SIGTERM, then this long to exit (8 s seen here for the 14 processes), then SIGKILL
UI_PORT = 5000  # MLflow's own default


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the default store of studies run from this folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('studies/mlflow.db').resolve()}"


def missing_store(uri: str) -> bool:
    """A sqlite:/// store whose file does not exist (MLflow would quietly create an empty one)."""
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def ui_command(uri: str) -> str:
    """The shell command that opens this store in the MLflow UI, bound to loopback, quoted for a
    POSIX shell (a store path with a space pastes as it is)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    args = ["--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(UI_PORT)]
    return f"{python_command()} -m mlflow ui {shlex.join(args)}"


def ui_url(uri: str, experiment_id: str, study: str, port: int = UI_PORT) -> str:
    """The link to open once ui_command runs: the study's trial runs (dashboards.views.study_url),
    on the tracking server itself when the store is one."""
    # lazy, as below: this module starts a server and stays light (no matplotlib, no mlflow)
    from dashboards.views import study_url

    base = uri if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    return study_url(base, experiment_id, study)


def study_links(uri: str, host: str, port: int) -> list[str]:
    """`study NAME: URL` for every study whose saved view is in the store (dashboards.views)."""
    # lazy: a second of imports, only once the store is known
    from mlflow.tracking import MlflowClient

    from dashboards.views import saved_studies, study_url

    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    return [f"study {study}: {study_url(base, exp, study)}" for exp, study in saved_studies(MlflowClient(uri))]


def python_command() -> str:
    """This interpreter as the user would type it (`.venv/bin/python`): the venv need not be activated.
    One shell word, quoted when the path needs it."""
    exe = os.path.abspath(sys.executable)
    rel = os.path.relpath(exe)
    return shlex.quote(rel if not rel.startswith("..") else exe)


def main(argv: list[str] | None = None, prog: str = "python -m dashboards.ui") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Start the MLflow UI on a study store.")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="store to browse (default: MLFLOW_TRACKING_URI, else sqlite:///studies/mlflow.db)",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    if missing_store(uri):
        print(f"error: no MLflow store at {uri}; run a study first (python -m study.run SPEC)", file=sys.stderr)
        return 2
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server already: open it in a browser")
        return 0
    # This interpreter's mlflow: `.venv/bin/python -m dashboards.ui` works without an activated venv.
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    print(f"MLflow UI on http://{args.host}:{args.port}  (Ctrl-C to stop)\n  {shlex.join(cmd)}", flush=True)
    links = study_links(uri, args.host, args.port)
    if links:
        print(
            "open, once it answers (a minute or two on a busy machine), each study's trials:\n  " + "\n  ".join(links),
            flush=True,
        )
    return serve(cmd)


class _Terminated(Exception):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt."""


def _raise_terminated(signum, frame):
    raise _Terminated


def serve(cmd: list[str], grace_s: float = STOP_GRACE_S) -> int:
    """Run a server in a session of its own until it exits, Ctrl-C or SIGTERM; then stop its whole
    process tree (`stop_tree`). -> the server's exit status, or 0 when we stopped it."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    server = None
    try:
        server = subprocess.Popen(cmd, start_new_session=True)
        return server.wait()
    except (KeyboardInterrupt, _Terminated):
        print("\nstopping the MLflow UI ...", file=sys.stderr, flush=True)
        return 0
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short; it is bounded by grace_s.
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if server is not None:
                stop_tree(server, grace_s)
        finally:
            signal.signal(signal.SIGINT, handlers[signal.SIGINT])
            signal.signal(signal.SIGTERM, previous)


def stop_tree(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group that `proc` leads (start_new_session) and any descendant that left
    it, wait up to grace_s for all of them to exit, then SIGKILL the rest; reaps `proc`."""
    pgid = proc.pid
    targets = _tree(pgid)
    _send(pgid, targets, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    while (left := _alive(pgid, targets)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        _send(pgid, left, signal.SIGKILL)
        proc.wait()
        while _alive(pgid, left) and time.monotonic() < deadline + 5:  # SIGKILL is not refused, but not instant
            time.sleep(0.05)


def _send(pgid: int, pids: set[int], sig: int) -> None:
    for kill, target in [(os.killpg, pgid), *((os.kill, pid) for pid in pids - {pgid})]:
        try:
            kill(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


def processes() -> dict[int, tuple[str, int, int]] | None:
    """pid -> (state, parent pid, process group) of every process, from /proc; None without /proc."""
    if not os.path.isdir("/proc/self"):
        return None
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(entry.name)
        if fields is None:  # it exited meanwhile
            continue
        state, ppid, pgrp = fields[:3]
        table[int(entry.name)] = (state, int(ppid), int(pgrp))
    return table


def _tree(pgid: int) -> set[int]:
    """The live processes of group pgid and every descendant of its leader (some start sessions
    of their own: MLflow's job subprocesses)."""
    table = processes()
    if table is None:
        return set()
    below, frontier = set(), {pgid}
    while frontier:
        frontier = {pid for pid, (state, ppid, _) in table.items() if ppid in frontier and state != "Z"} - below
        below |= frontier
    return below | {pid for pid, (state, _, group) in table.items() if group == pgid and state != "Z"}


def _alive(pgid: int, pids: set[int]) -> set[int]:
    """Which of pids still run (a zombie has exited: only its parent's wait is missing), plus any
    new member of the group. Without /proc: the group itself while any member answers."""
    table = processes()
    if table is None:
        try:
            os.killpg(pgid, 0)
            return {pgid}
        except (ProcessLookupError, PermissionError):
            return set()
    return {pid for pid, (state, _, group) in table.items() if (pid in pids or group == pgid) and state != "Z"}


if __name__ == "__main__":
    sys.exit(main())
