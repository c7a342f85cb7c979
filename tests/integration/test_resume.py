"""Interrupt a running study (Ctrl-C, or SIGKILL of the driver), then `--resume` it to completion:
the real CLI, a real local Ray, real Optuna, a real MLflow SQLite store.

The study has 2 trials of 4 epochs, one at a time. The signal goes out when the second trial has
printed its `epoch ... 2/4` line: the first trial has finished, the second has a checkpoint at
epoch 2. After --resume: the first trial is not run again, the second continues from its
checkpoint, MLflow holds one run per trial with exactly one entry per epoch, and the Optuna study
inside the saved searcher holds both trials, complete.

Each CLI run gets its own session (start_new_session), so the Ray processes it starts can be
found by session id and killed after a SIGKILL, and checked for leftovers after a normal exit.

Budget: per case 3 Train worker-group starts (2 before the signal, 1 after; 10-40 s each here)
plus 2-4 CLI and Ray start-ups. The cases mostly wait on those start-ups, so the two run side by
side (one thread each, each CLI its own local Ray): ~4 min instead of ~6. The edited-spec checks
run in the SIGINT case only.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from study_cli import clean_env

pytestmark = pytest.mark.integration

NAME = "resumable"
CASES = ("SIGINT", "SIGKILL")
EPOCHS = 4
START = re.compile(r"^\[\d+:\d\d\] start\s+([0-9a-f]{8})\b")
EPOCH = re.compile(r"^\[\d+:\d\d\] epoch\s+([0-9a-f]{8})\s+(\d+)/(\d+)\s")
HINT = "interrupted: the state is saved; continue with"


# --- processes: every CLI run is a session leader; its Ray processes stay in its session ------------

def session_pids(sid: int) -> dict[int, str]:
    """Live (non-zombie) processes of session `sid`: pid -> command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
            if int(fields[3]) != sid or fields[0] == "Z":
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

    def run(self, label: str, *args: str, cwd: Path, timeout: float = 400,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """subprocess.run with a hard timeout that also kills the Ray processes the CLI started."""
        cmd = [sys.executable, "-m", "study.run", *args]
        p = subprocess.Popen(cmd, cwd=cwd, env=clean_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        self.sids.append(p.pid)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(p.pid)
            out, err = p.communicate()
            pytest.fail(f"{label}: no exit within {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
        self.leftovers[label] = wait_session_empty(p.pid, timeout=30)
        (cwd / f"{label}.out").write_text(out)  # kept beside the study, for a failure's post-mortem
        (cwd / f"{label}.err").write_text(err)
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)

    def cleanup(self) -> None:
        for sid in self.sids:
            kill_session(sid)


def write_spec(path: Path, storage: Path | str, phantom: dict, epochs: int = EPOCHS, trials: int = 2,
               concurrency: int = 1, resources: dict | None = None, train: dict | None = None) -> Path:
    """The tiny study the fault tests run; resources and train add to (or override) its sections."""
    spec = {
        "study": {"name": NAME, "trials": trials, "concurrency": concurrency, "seed": 7, "scheduler": "none",
                  "storage": str(storage), "objectives": [{"metric": "val/mre_mm", "mode": "min"}]},
        "resources": {"workers": 1, "cpus_per_worker": 1, **(resources or {})},
        "base": {
            "model": {"name": "unet", "width": 0.125},
            "data": {"dataset": "phantom", "root": str(path.parent / "phantom"), "input_size": [32, 24],
                     "phantom": phantom},
            "train": {"epochs": epochs, "batch_size": 4, **(train or {})},
            "loss": {"type": "ewc"},
            "eval": {"decode": "subpixel", "split": "test2"},
        },
        "space": {"optim.lr": {"loguniform": [1e-3, 1e-2]}},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def interrupt(runs: Runs, spec: Path, cwd: Path, sig: signal.Signals, timeout: float = 400) -> dict:
    """Start the study; send `sig` to the driver once the second trial printed epoch 2/4."""
    p = subprocess.Popen([sys.executable, "-m", "study.run", str(spec)], cwd=cwd, env=clean_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    runs.sids.append(p.pid)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump():
        for line in p.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen, starts = [], []
    deadline = time.monotonic() + timeout

    def give_up(why: str):
        kill_session(p.pid)
        pytest.fail(f"{why}\n" + "".join(seen)[-4000:])

    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            give_up(f"no `epoch <second trial> 2/{EPOCHS}` line within {timeout} s")
        if line is None:
            give_up(f"the CLI ended (exit {p.wait()}) before the second trial reached epoch 2")
        seen.append(line)
        if m := START.match(line):
            starts.append(m[1])
        m = EPOCH.match(line)
        if m and len(starts) == 2 and m[1] == starts[1] and int(m[2]) == 2:
            break

    os.kill(p.pid, sig)
    try:
        rc = p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        give_up(f"the driver did not exit within 120 s of {sig.name}")
    if sig == signal.SIGKILL:
        # Only the driver died; what it started is still in its session (RAY-NOTES: two agents survive).
        left_after_exit = kill_session(p.pid)
    else:
        left_after_exit = wait_session_empty(p.pid, timeout=60)
    reader.join(timeout=30)
    while (line := lines.get_nowait() if not lines.empty() else None) is not None:
        seen.append(line)
    (cwd / f"{sig.name}.log").write_text("".join(seen))
    return {"rc": rc, "output": "".join(seen), "starts": starts, "left_after_exit": left_after_exit,
            "checkpointed": checkpointed_epochs(spec.parent / "store" / NAME / "train" / f"train_{starts[1]}")}


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
    """trial id -> {status, outcome, lr, final val/mre_mm, run_id} of the MLflow trial runs, the
    number of study (parent) runs and of trial runs. Read with a client of its own: the two cases
    run in threads."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id], max_results=1000)
    trials = {}
    for run in runs:
        tags = run.data.tags
        if tags.get("study.role") == "trial":
            trials[tags["tune.trial_id"]] = {
                "run_id": run.info.run_id, "status": run.info.status, "outcome": tags.get("trial.status"),
                "lr": float(run.data.params["optim.lr"]), "val/mre_mm": run.data.metrics.get("val/mre_mm")}
    roles = [r.data.tags.get("study.role") for r in runs]
    return trials, roles.count("study"), roles.count("trial")


def histories(uri: str, trials: dict[str, dict]) -> dict[str, dict[str, list[int]]]:
    """trial id -> metric -> the steps logged, in the order they were logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return {tid: {key: [m.step for m in sorted(client.get_metric_history(t["run_id"], key), key=lambda m: m.timestamp)]
                  for key in ("train/loss", "val/mre_mm")}
            for tid, t in trials.items()}


def optuna_study(tune_dir: Path):
    """The Optuna study inside the searcher state Tune saved with the experiment."""
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(tune_dir))  # the newest searcher-state-*.pkl
    return searcher._ot_study


def scenario(sig: signal.Signals, tmp: Path, phantom: dict, runs: Runs) -> dict:
    """Interrupt the study with the signal, look at what is left, resume it, look again.
    In the SIGINT case, then resume the finished study with an edited spec, without and with --force."""
    spec = write_spec(tmp / "resumable.yaml", tmp / "store", phantom)
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    first = interrupt(runs, spec, tmp, sig)
    after_interrupt = {tid: t["outcome"] for tid, t in trial_runs(uri)[0].items()}
    resumed = runs.run("resume", str(spec), "--resume", cwd=tmp)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials, parents, n_trial_runs = trial_runs(uri)
    data = {
        "signal": sig, "dir": tmp, "spec": spec, "uri": uri, "first": first, "resumed": resumed, "runs": runs,
        "after_interrupt": after_interrupt, "trials": trials, "parents": parents, "n_trial_runs": n_trial_runs,
        "histories": histories(uri, trials), "optuna": optuna_study(tmp / "store" / NAME / "tune"),
    }
    if sig == signal.SIGINT:
        edited = write_spec(tmp / "resumable-5-epochs.yaml", tmp / "store", phantom, epochs=EPOCHS + 1)
        data["edited"] = runs.run("edited", str(edited), "--resume", cwd=tmp, timeout=120)
        data["forced"] = runs.run("forced", str(edited), "--resume", "--force", cwd=tmp)
        trials, _, n_trial_runs = trial_runs(uri)
        data["after_forced"] = trials, histories(uri, trials), n_trial_runs
    return data


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory, tiny_phantom):
    """Both cases, side by side; each one's data, or the exception that stopped it."""
    runs = {case: Runs() for case in CASES}
    results: dict[str, object] = {}

    def work(case: str) -> None:
        try:
            tmp = tmp_path_factory.mktemp(f"resume-{case}")
            results[case] = scenario(signal.Signals[case], tmp, tiny_phantom, runs[case])
        except BaseException as e:  # pytest.fail raises an OutcomeException (a BaseException)
            results[case] = e

    threads = [threading.Thread(target=work, args=(case,), daemon=True) for case in CASES]
    try:
        for t in threads:
            t.start()
        for t in threads:  # every step inside has its own timeout; this only bounds their sum
            t.join(timeout=1800)
        yield results
    finally:
        for r in runs.values():
            r.cleanup()


@pytest.fixture(params=CASES)
def study(request, scenarios):
    result = scenarios.get(request.param)
    if result is None:
        pytest.fail(f"the {request.param} case did not finish", pytrace=False)
    if isinstance(result, BaseException):
        pytest.fail(f"the {request.param} case failed: {type(result).__name__}: {result}", pytrace=False)
    return result


def first_epoch_after_resume(out: str, trial_id: str) -> int:
    epochs = [int(m[2]) for line in out.splitlines() if (m := EPOCH.match(line)) and m[1] == trial_id]
    assert epochs, f"no epoch line of {trial_id} after --resume:\n{out[-3000:]}"
    return epochs[0]


def test_the_driver_stopped_where_the_test_signalled(study):
    first = study["first"]
    first_id, second_id = first["starts"]
    assert f"finished  {first_id}" in first["output"]
    assert f"epoch  {second_id}  {EPOCHS}/{EPOCHS}" not in first["output"]
    if study["signal"] == signal.SIGKILL:
        assert first["rc"] == -signal.SIGKILL
    # the second trial's own Train run has registered a checkpoint of at least the epoch Tune printed last
    assert first["checkpointed"] and max(first["checkpointed"]) >= 2, first["checkpointed"]


def test_ctrl_c_exits_130_and_prints_the_resume_command(study):
    if study["signal"] != signal.SIGINT:
        pytest.skip("only Ctrl-C lets the CLI answer")
    first = study["first"]
    assert HINT in first["output"], first["output"][-3000:]
    assert f"python -m study.run {shlex.quote(str(study['spec']))} --resume" in first["output"]
    assert first["rc"] == 130, first["output"][-3000:]


def test_ctrl_c_marks_the_unfinished_trial_interrupted_in_mlflow(study):
    if study["signal"] != signal.SIGINT:
        pytest.skip("a SIGKILLed driver cannot update MLflow")
    first_id, second_id = study["first"]["starts"]
    assert study["after_interrupt"] == {first_id: "finished", second_id: "interrupted"}


def test_ray_stops_with_the_driver_on_ctrl_c(study):
    if study["signal"] != signal.SIGINT:
        pytest.skip("after SIGKILL the test kills the leftovers itself")
    assert study["first"]["left_after_exit"] == {}


def test_resume_continues_the_unfinished_trial_and_skips_the_finished_one(study):
    first_id, second_id = study["first"]["starts"]
    out = study["resumed"].stdout
    assert f"start  {first_id}" not in out
    assert f"start  {second_id}" in out
    # It continues after its newest registered checkpoint (epoch 2, or later if the Train run got
    # further than Tune before the driver went down), not from epoch 1. The checkpoint's own
    # metrics are reported once more first: Tune may never have received them.
    newest = max(study["first"]["checkpointed"])
    first_epoch = first_epoch_after_resume(out, second_id)
    assert first_epoch >= 2, out[-3000:]
    assert first_epoch == newest, (first_epoch, study["first"]["checkpointed"])
    assert f"epoch  {second_id}  {newest + 1}/{EPOCHS}" in out
    assert f"epoch  {second_id}  {EPOCHS}/{EPOCHS}" in out
    assert "2 trials (0 failed or diverged)" in out


def test_mlflow_has_one_run_per_trial_and_one_entry_per_epoch(study):
    trials = study["trials"]
    assert study["parents"] == 1 and study["n_trial_runs"] == 2
    assert sorted(trials) == sorted(study["first"]["starts"])  # one run per trial, none duplicated
    assert {t["outcome"] for t in trials.values()} == {"finished"}
    assert {t["status"] for t in trials.values()} == {"FINISHED"}
    steps = list(range(1, EPOCHS + 1))
    expected = {tid: {"train/loss": steps, "val/mre_mm": steps} for tid in study["first"]["starts"]}
    assert study["histories"] == expected, (
        f"checkpoints the second trial had registered when the driver went down: epochs "
        f"{study['first']['checkpointed']}; Tune had printed up to epoch 2")


def test_optuna_history_holds_both_trials_complete(study):
    import optuna

    ot_trials = study["optuna"].get_trials(deepcopy=False)
    assert len(ot_trials) == 2
    assert [t.state for t in ot_trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # Each trial's value is its last val/mre_mm, the one MLflow holds; matched by the sampled lr.
    final = {t["lr"]: t["val/mre_mm"] for t in study["trials"].values()}
    assert sorted(t.params["optim.lr"] for t in ot_trials) == sorted(final)
    for t in ot_trials:
        assert t.values is not None and len(t.values) == 1
        assert t.values[0] == pytest.approx(final[t.params["optim.lr"]], rel=1e-9)
    # The same history in the study's Optuna journal (what optuna-dashboard opens), across the resume.
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(JournalFileBackend(str(study["dir"] / "store" / NAME / "optuna.journal")))
    recorded = optuna.load_study(study_name=NAME, storage=journal).get_trials(deepcopy=False)
    assert [(t.state, t.params, t.values) for t in recorded] == [(t.state, t.params, t.values) for t in ot_trials]


def test_resume_with_an_edited_spec_needs_force(study):
    if study["signal"] != signal.SIGINT:
        pytest.skip("checked once, in the SIGINT case")
    edited = study["edited"]
    assert edited.returncode == 2, edited.stdout[-3000:] + edited.stderr[-3000:]
    assert f"    base.train.epochs: {EPOCHS} -> {EPOCHS + 1}" in edited.stderr.splitlines()
    assert "--force" in edited.stderr
    assert not any(START.match(line) for line in edited.stdout.splitlines())

    forced = study["forced"]
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "warning: resuming with an edited spec (--force)" in forced.stdout + forced.stderr
    assert f"base.train.epochs: {EPOCHS} -> {EPOCHS + 1}" in forced.stdout + forced.stderr
    assert not any(START.match(line) for line in forced.stdout.splitlines())  # nothing left to run
    assert "2 trials (0 failed or diverged)" in forced.stdout
    table = forced.stdout.split("trials, best first:")[1].split("\n\n")[0]  # not the front printed below it
    assert table.count(" finished ") == 2, table  # trained 4 epochs under the old spec: not "stopped early"
    trials, hist, n_trial_runs = study["after_forced"]
    assert n_trial_runs == 2 and {t["outcome"] for t in trials.values()} == {"finished"}
    assert hist == study["histories"]  # nothing ran again


def test_no_process_of_the_study_outlives_it(study):
    runs: Runs = study["runs"]
    assert {label: left for label, left in runs.leftovers.items() if left} == {}
    for sid in runs.sids:
        assert session_pids(sid) == {}, f"session {sid} still has processes"
