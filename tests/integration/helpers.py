"""What the integration tests share: the CLI as a subprocess, the processes it leaves behind, the
tiny study the fault tests run, and what they read back from MLflow, Optuna, Train and a bucket.

    p = StudyProcess(str(spec), "--address", addr, cwd=tmp, env=token_env, runs=runs)  # starts it
    p.wait_for(EPOCH, timeout=400, what="an epoch line")  # the re.Match; else kill + pytest.fail
    p.send(signal.SIGINT)                                 # to the driver only
    rc = p.wait(timeout=120)                              # exit status, once every line is read
    first_trial, log = p.starts[0], p.output              # START lines' trial ids, the text

Every CLI run started here is a session leader (start_new_session): the Ray processes it starts stay
in its session, so that kill_session(pid) finds and stops them after a SIGKILL of the driver, and
wait_session_empty(pid) says what a normal exit left running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from trainables.procs import stat_fields

NAME = "resumable"  # the study write_spec writes (and trial_runs reads)
EPOCHS = 4
START = re.compile(r"^\[\d+:\d\d\] start\s+([0-9a-f]{8})\b")
EPOCH = re.compile(r"^\[\d+:\d\d\] epoch\s+([0-9a-f]{8})\s+(\d+)/(\d+)\s")
HINT = "interrupted: the state is saved; continue with"
RAY = str(Path(sys.executable).parent / "ray")


# --- the CLI as a subprocess, the way users run it ---------------------------------------------------


def clean_env(**extra: str) -> dict:
    """This environment without a tracking server or cluster address the developer may have set,
    plus `extra` (e.g. an object store's AWS_* variables, a cluster's RAY_AUTH_* ones)."""
    return {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}, **extra}


def run_cli(*args: str, cwd: Path, timeout: int = 400, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m study.run ARGS` to its end; env: variables added to clean_env()."""
    return subprocess.run(
        [sys.executable, "-m", "study.run", *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class StudyProcess:
    """`python -m study.run ARGS`, started at once in a session of its own (its pid is the session id),
    its stdout read line by line in a daemon thread, stderr merged into it or, with stderr_apart, read
    apart. env: variables added to clean_env(); runs: a Runs whose cleanup kills this session too.

    wait_for looks at the lines in order, each once, and notes the trial id of every START line it
    passes in `starts` (wait notes the rest), so that a predicate sees the trials started so far.
    """

    def __init__(
        self,
        *args: str,
        cwd: Path,
        env: dict | None = None,
        runs: Runs | None = None,
        stderr_apart: bool = False,
        label: str = "study.run",
    ):
        self.cmd = [sys.executable, "-m", "study.run", *args]
        self.label = label  # names the run in a failure's message
        self.popen = subprocess.Popen(
            self.cmd,
            cwd=cwd,
            env=clean_env(**(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr_apart else subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        if runs is not None:
            runs.sids.append(self.pid)
        self.lines: list[tuple[float, str]] = []  # (time.monotonic() when read, line), stdout
        self.starts: list[str] = []  # trial ids of the START lines looked at so far
        self._err: list[str] = []
        self._looked = 0  # lines wait_for (or wait) has looked at
        self._eof = False
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.popen.stdout, True), daemon=True)]
        if stderr_apart:
            self._readers.append(threading.Thread(target=self._read, args=(self.popen.stderr, False), daemon=True))
        for reader in self._readers:
            reader.start()

    def _read(self, stream, is_stdout: bool) -> None:
        try:
            for line in stream:
                with self._cond:
                    if is_stdout:
                        self.lines.append((time.monotonic(), line))
                        self._cond.notify_all()
                    else:
                        self._err.append(line)
        finally:
            if is_stdout:
                with self._cond:
                    self._eof = True
                    self._cond.notify_all()

    @property
    def output(self) -> str:
        """stdout so far (with stderr, unless stderr_apart)."""
        with self._cond:
            return "".join(line for _, line in self.lines)

    @property
    def stderr(self) -> str:
        """stderr so far ('' unless stderr_apart)."""
        with self._cond:
            return "".join(self._err)

    def _unseen(self) -> list[str]:
        with self._cond:
            return [line for _, line in self.lines[self._looked :]]

    def _look(self, line: str) -> None:
        self._looked += 1
        if m := START.match(line):
            self.starts.append(m[1])

    def wait_for(self, until: str | re.Pattern | Callable[[str], object], timeout: float, what: str):
        """The first line from here on that `until` matches (a regex, searched: the re.Match) or
        satisfies (a callable of the line: what it returned). If the CLI ends first or `timeout` s
        pass, its session is killed and the test fails, naming `what` and showing the output's tail."""
        test = re.compile(until).search if isinstance(until, (str, re.Pattern)) else until
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                while self._looked == len(self.lines) and not self._eof and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                ended = self._eof
            new = self._unseen()
            for line in new:
                self._look(line)
                if hit := test(line):
                    return hit
            if ended and not new:
                self._give_up(f"waiting for {what}: the CLI ended first (exit {self._exit_status()})")
            if time.monotonic() >= deadline:
                self._give_up(f"waiting for {what}: none within {timeout} s")

    def send(self, sig: signal.Signals) -> None:
        """Signal the driver (not its session)."""
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        """The driver's exit status, once it has exited and its output is read to the end (what a
        process left in the session may still hold open is given 30 s). No exit within `timeout` s:
        its session is killed and the test fails with the output's tail."""
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._give_up(f"no exit within {timeout} s")
        for reader in self._readers:
            reader.join(timeout=30)
        for line in self._unseen():
            self._look(line)
        return rc

    def finish(self, timeout: float) -> subprocess.CompletedProcess:
        """wait, as a CompletedProcess (stdout, and stderr if kept apart)."""
        rc = self.wait(timeout)
        return subprocess.CompletedProcess(self.cmd, rc, self.output, self.stderr)

    def kill(self) -> dict[int, str]:
        """SIGKILL everything in the CLI's session (kill_session); what was killed."""
        return kill_session(self.pid)

    def _exit_status(self) -> int | None:
        try:
            return self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return None

    def _give_up(self, why: str):
        self.kill()
        err = f"\n--- stderr:\n{self.stderr[-3000:]}" if len(self._readers) > 1 else ""
        pytest.fail(f"{self.label}: {why}\n{self.output[-4000:]}{err}")


# --- processes: every CLI run is a session leader; its Ray processes stay in its session ------------


def session_pids(sid: int) -> dict[int, str]:
    """Live (non-zombie) processes of session `sid`: pid -> command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat_fields(entry)  # state ppid pgrp session ...
            if fields is None or int(fields[3]) != sid or fields[0] == "Z":
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        found[int(entry)] = cmd.strip()[:160]
    return found


def wait_session_empty(sid: int, timeout: float) -> dict[int, str]:
    """Poll until session `sid` has no live process or `timeout` passes; returns what is left."""
    deadline = time.monotonic() + timeout
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill_session(sid: int) -> dict[int, str]:
    """SIGKILL the process group and then every process left in the session; returns what was killed."""
    victims = session_pids(sid)
    if not victims:
        return {}  # also: never signal a process group whose id the system may have handed on
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in session_pids(sid):  # Ray's actor workers have process groups of their own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    left = wait_session_empty(sid, timeout=30)
    assert not left, f"could not kill session {sid}: {left}"
    return victims


class Runs:
    """CLI runs started here, each in its own session; what each one left behind on exit."""

    def __init__(self):
        self.sids: list[int] = []
        self.leftovers: dict[str, dict[int, str]] = {}

    def run(
        self, label: str, *args: str, cwd: Path, timeout: float = 400, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        """A CLI run to its end (stdout and stderr apart), with a hard timeout that also kills the Ray
        processes it started; what its exit left running goes to leftovers[label], its output to
        label.out and label.err beside the study, for a failure's post-mortem."""
        p = StudyProcess(*args, cwd=cwd, env=env, runs=self, stderr_apart=True, label=label)
        done = p.finish(timeout)
        self.leftovers[label] = wait_session_empty(p.pid, timeout=30)
        (cwd / f"{label}.out").write_text(done.stdout)
        (cwd / f"{label}.err").write_text(done.stderr)
        return done

    def cleanup(self) -> None:
        for sid in self.sids:
            kill_session(sid)


# --- Ray clusters of a test's own: `ray start` on loopback ------------------------------------------


def free_ports(n: int = 1) -> list[int]:
    """n distinct loopback ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def ray_start(args: list[str], env: dict) -> int:
    """`ray start ...` in a session of its own (its output captured); returns the session id that holds
    the node's processes. A failed start is killed and fails the test with its output."""
    p = subprocess.Popen(
        [RAY, "start", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_session(p.pid)
        out, _ = p.communicate()
        pytest.fail(f"ray start {' '.join(args)}: no exit within 120 s\n{out[-3000:]}")
    if p.returncode != 0:
        kill_session(p.pid)
        pytest.fail(f"ray start {' '.join(args)}: exit {p.returncode}\n{out[-3000:]}")
    return p.pid


# --- the tiny study the fault tests run, and what they read back -------------------------------------


def write_spec(
    path: Path,
    storage: Path | str,
    phantom: dict,
    epochs: int = EPOCHS,
    trials: int = 2,
    concurrency: int = 1,
    resources: dict | None = None,
    train: dict | None = None,
    name: str = NAME,
) -> Path:
    """The tiny study the fault tests run; resources and train add to (or override) its sections."""
    spec = {
        "study": {
            "name": name,
            "trials": trials,
            "concurrency": concurrency,
            "seed": 7,
            "scheduler": "none",
            "storage": str(storage),
            "objectives": [{"metric": "val/mre_mm", "mode": "min"}],
        },
        "resources": {"workers": 1, "cpus_per_worker": 1, **(resources or {})},
        "base": {
            "model": {"name": "unet", "width": 0.125},
            "data": {
                "dataset": "phantom",
                "root": str(path.parent / "phantom"),
                "input_size": [32, 24],
                "phantom": phantom,
            },
            "train": {"epochs": epochs, "batch_size": 4, **(train or {})},
            "loss": {"type": "ewc"},
            "eval": {"decode": "subpixel", "split": "test2"},
        },
        "space": {"optim.lr": {"loguniform": [1e-3, 1e-2]}},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def checkpointed_epochs(train_run: Path) -> list[int]:
    """The epochs of the checkpoints the Train run has registered (what a restarted run resumes from).

    Workers write checkpoint folders ahead of the controller: a folder can exist that the run never
    registered (seen after SIGKILL), so the run's checkpoint_manager_snapshot.json is what counts.
    """
    snapshot = train_run / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return []
    results = json.loads(snapshot.read_text())["checkpoint_results"]
    return sorted(r["metrics"]["epoch"] for r in results if (train_run / r["checkpoint_dir_name"]).is_dir())


def trial_runs(uri: str) -> tuple[dict[str, dict], int, int]:
    """trial id -> {status, outcome, lr, final val/mre_mm, run_id} of the MLflow trial runs of study
    NAME, the number of study (parent) runs and of trial runs. Read with a client of its own: callers
    may run in threads."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id], max_results=1000)
    trials = {}
    for run in runs:
        tags = run.data.tags
        if tags.get("study.role") == "trial":
            trials[tags["tune.trial_id"]] = {
                "run_id": run.info.run_id,
                "status": run.info.status,
                "outcome": tags.get("trial.status"),
                "lr": float(run.data.params["optim.lr"]),
                "val/mre_mm": run.data.metrics.get("val/mre_mm"),
            }
    roles = [r.data.tags.get("study.role") for r in runs]
    return trials, roles.count("study"), roles.count("trial")


def histories(uri: str, trials: dict[str, dict]) -> dict[str, dict[str, list[int]]]:
    """trial id -> metric -> the steps logged, in the order they were logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return {
        tid: {
            key: [m.step for m in sorted(client.get_metric_history(t["run_id"], key), key=lambda m: m.timestamp)]
            for key in ("train/loss", "val/mre_mm")
        }
        for tid, t in trials.items()
    }


def optuna_study(tune_dir: Path):
    """The Optuna study inside the searcher state Tune saved with the experiment."""
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(tune_dir))  # the newest searcher-state-*.pkl
    return searcher._ot_study


def first_epoch_after_resume(out: str, trial_id: str) -> int:
    epochs = [int(m[2]) for line in out.splitlines() if (m := EPOCH.match(line)) and m[1] == trial_id]
    assert epochs, f"no epoch line of {trial_id} after --resume:\n{out[-3000:]}"
    return epochs[0]


def objects(store: dict, prefix: str) -> dict[str, int]:
    """key -> size of every object under `prefix` in the s3_store fixture's bucket."""
    found, token = {}, {}
    while True:
        page = store["client"].list_objects_v2(Bucket=store["bucket"], Prefix=prefix, **token)
        found |= {o["Key"]: o["Size"] for o in page.get("Contents", [])}
        if not page.get("IsTruncated"):
            return found
        token = {"ContinuationToken": page["NextContinuationToken"]}
