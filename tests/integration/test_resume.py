"""Interrupt a running study (Ctrl-C; SIGTERM, as SLURM, Kubernetes and `docker stop` stop a job;
SIGHUP, a closed terminal; or SIGKILL of the driver), then `--resume` it to completion: the real CLI,
a real local Ray, real Optuna, a real MLflow SQLite store.

The study has 2 trials of 4 epochs, one at a time. The signal goes out when the second trial has
printed its `epoch ... 2/4` line: the first trial has finished, the second has a checkpoint at
epoch 2. After --resume: the first trial is not run again, the second continues from its
checkpoint, MLflow holds one run per trial with exactly one entry per epoch, and the Optuna study
inside the saved searcher holds both trials, complete.

Ray: each CLI run starts a local Ray of its own, not the session's shared cluster (conftest.py): what
that Ray does when its driver stops is what is tested. Each CLI run gets its own session
(start_new_session), so the Ray processes it starts can be found by session id and killed after a
SIGKILL, and checked for leftovers after a normal exit.

SIGTERM and SIGHUP must stop the study as Ctrl-C does (Tune's graceful stop: state saved, trials
stopped at their last checkpoint, MLflow's queued results delivered), print one line naming the
signal and the resume command, and exit 128 + the signal, in less than a batch system's 30 s grace
(the seconds from the signal to the exit are printed); Ray's own handler must not abort the driver.

Budget: per case 3 Train worker-group starts (2 before the signal, 1 after) plus 2-4 CLI and Ray
start-ups. The cases mostly wait on those start-ups, so two run side by side at a time (one thread
each, each CLI its own local Ray). The edited-spec checks run in the SIGINT case only.
"""

from __future__ import annotations

import shlex
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    EPOCH,
    EPOCHS,
    HINT,
    NAME,
    START,
    Runs,
    StudyProcess,
    checkpointed_epochs,
    first_epoch_after_resume,
    histories,
    optuna_study,
    session_pids,
    trial_runs,
    wait_session_empty,
    write_spec,
)

pytestmark = pytest.mark.integration

CASES = ("SIGINT", "SIGTERM", "SIGHUP", "SIGKILL")
GRACEFUL = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # the driver answers these itself
AT_ONCE = 2  # cases running side by side: each starts a local Ray, on a 2-core machine
GRACE_S = 30  # SLURM's KillWait and Kubernetes' terminationGracePeriodSeconds: SIGKILL follows after this


def interrupt(runs: Runs, spec: Path, cwd: Path, sig: signal.Signals, timeout: float = 400) -> dict:
    """Start the study; send `sig` to the driver once the second trial printed epoch 2/4."""
    p = StudyProcess(str(spec), cwd=cwd, runs=runs, label=f"the study ({sig.name} case)")

    def second_trial_at_epoch_2(line: str) -> bool:
        m = EPOCH.match(line)
        return bool(m and len(p.starts) == 2 and m[1] == p.starts[1] and int(m[2]) == 2)

    p.wait_for(second_trial_at_epoch_2, timeout, f"the second trial's `epoch ... 2/{EPOCHS}` line")
    starts = list(p.starts)
    p.send(sig)
    sent = time.monotonic()
    rc = p.wait(timeout=120)
    stop_s = time.monotonic() - sent
    print(f"{sig.name}: the driver exited {rc} {stop_s:.1f} s after the signal")
    if sig == signal.SIGKILL:
        # Only the driver died; what it started is still in its session (RAY-NOTES: two agents survive).
        left_after_exit = p.kill()
    else:
        left_after_exit = wait_session_empty(p.pid, timeout=60)
    (cwd / f"{sig.name}.log").write_text(p.output)
    return {
        "rc": rc,
        "output": p.output,
        "starts": starts,
        "left_after_exit": left_after_exit,
        "stop_s": stop_s,
        "checkpointed": checkpointed_epochs(spec.parent / "store" / NAME / "train" / f"train_{starts[1]}"),
    }


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
        "signal": sig,
        "dir": tmp,
        "spec": spec,
        "uri": uri,
        "first": first,
        "resumed": resumed,
        "runs": runs,
        "after_interrupt": after_interrupt,
        "trials": trials,
        "parents": parents,
        "n_trial_runs": n_trial_runs,
        "histories": histories(uri, trials),
        "optuna": optuna_study(tmp / "store" / NAME / "tune"),
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
    """Every case, AT_ONCE side by side; each one's data, or the exception that stopped it."""
    runs = {case: Runs() for case in CASES}
    results: dict[str, object] = {}
    slots = threading.Semaphore(AT_ONCE)
    folders = {case: tmp_path_factory.mktemp(f"resume-{case}") for case in CASES}  # mktemp is not thread-safe

    def work(case: str) -> None:
        with slots:
            try:
                results[case] = scenario(signal.Signals[case], folders[case], tiny_phantom, runs[case])
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


def test_sigterm_and_sighup_stop_the_study_like_ctrl_c_within_the_grace(study):
    sig = study["signal"]
    if sig not in (signal.SIGTERM, signal.SIGHUP):
        pytest.skip("the stop signals of batch systems and terminals")
    first = study["first"]
    assert first["rc"] == 128 + sig, first["output"][-3000:]
    assert f"\ninterrupted by {sig.name}: the state is saved; continue with\n" in first["output"], first["output"][
        -3000:
    ]
    assert f"python -m study.run {shlex.quote(str(study['spec']))} --resume" in first["output"]
    assert f"{sig.name} received: stopping the study" in first["output"]
    # Ray's C++ handler did not abort the driver first (it prints this and exits 134)
    assert f"*** {sig.name} received" not in first["output"] and "Traceback" not in first["output"]
    assert "Tuner.restore" not in first["output"]  # Tune's own resume hint, which is not the user's command
    assert first["stop_s"] < GRACE_S, first["stop_s"]


def test_a_graceful_stop_marks_the_unfinished_trial_interrupted_in_mlflow(study):
    if study["signal"] not in GRACEFUL:
        pytest.skip("a SIGKILLed driver cannot update MLflow")
    first_id, second_id = study["first"]["starts"]
    assert study["after_interrupt"] == {first_id: "finished", second_id: "interrupted"}


def test_ray_stops_with_the_driver_on_a_graceful_stop(study):
    if study["signal"] not in GRACEFUL:
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
        f"{study['first']['checkpointed']}; Tune had printed up to epoch 2"
    )


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
