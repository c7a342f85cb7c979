"""Ray Tune + Optuna over Ray Train: a validated spec in, a searched, tracked study out.

    result = run_study(spec, address=None, tracking_uri=None, resume=False, force=False)
    result.table          # one row per trial, best first
    result.interrupted    # True after Ctrl-C: `--resume` continues from the saved state

The walk of a study: study.storage (the lock; refuse or resume) -> study.leftovers (what a killed
driver left: its Ray's processes, unregistered checkpoints) -> study.integrity (on --resume, Tune's
state must read back) -> dashboards check the tracking store ->
study.cluster (Ray up, the plan) -> study.tracking (the study's MLflow run) -> Tune with the
Optuna searcher and ASHA, each trial a study.trial.trial_driver -> callbacks study.tracking and
study.progress on every result (study.integrity.SpaceGuard first: it stops the study while the
storage has room for its state) -> the final table and the Pareto front.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# Tune's rich console output would interleave with our one-line-per-epoch progress.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Train V2 (the default in Ray 2.60) is what study.trial is written for; set before Ray is imported,
# here rather than in a caller, so that study.run and the Python API (study.run_study) agree.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from dashboards.publish import check_reachable, front_text  # noqa: E402
from study import tracking  # noqa: E402
from study.cluster import init_ray, plan  # noqa: E402
from study.leftovers import forget_ray_session, record_ray_session, remove_orphan_checkpoints, stop_leftover_ray  # noqa: E402
from study.integrity import (SpaceGuard, StorageFull, check_train_snapshots, check_tune_state, disk_full,  # noqa: E402
                             storage_full_message)
from study.progress import Progress  # noqa: E402
from study.repeats import RepeatASHA, RepeatSearch  # noqa: E402
from study.schema import TAG_CONFIG, TAG_RANK, TAG_REPEAT, Status, is_diverged  # noqa: E402
from study.search import SpaceSampler, make_sampler  # noqa: E402
from study.spec import Spec, SpecError, StudyError  # noqa: E402
from study.stop import GracefulStop  # noqa: E402
from study.storage import SNAPSHOT, StudyLock, StudyStorage, check_unchanged  # noqa: E402
from study.trial import DRIVER_RESOURCES, StopTrainRuns, TrialPayload, trial_driver  # noqa: E402


class _QuietTrialEnds(logging.Filter):
    """Drop Tune's traceback for a trial that diverged (a NaN loss is an outcome, which study.progress
    prints in one line) or that a full disk stopped (run_study ends the study with one line naming the
    folder); the traceback stays in the trial's error.txt."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage().startswith("Trial task failed") and (is_diverged(error) or disk_full(error)))


logging.getLogger("ray.tune.execution.tune_controller").addFilter(_QuietTrialEnds())


@dataclass
class StudyResult:
    table: pd.DataFrame  # one row per trial, best first
    tracking_uri: str
    study_dir: str
    experiment_id: str
    parent_run_id: str
    num_errors: int
    interrupted: bool  # Ctrl-C, SIGTERM or SIGHUP: the state is saved and --resume continues
    front: str = ""  # the Pareto front as a table (dashboards.pareto.front_text)
    undelivered: int = 0  # MLflow events still queued (the server did not answer): --resume delivers them
    stopped_by: str = ""  # the signal that stopped the study ("SIGTERM", "SIGHUP"), if one did


def run_study(
    spec: Spec,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    force: bool = False,
    verbose: bool = False,
    break_lock: bool = False,
) -> StudyResult:
    """Run (or with resume, continue) the study; one driver at a time (StudyLock). Raises
    StudyError, SpecError or ConnectionError before any trial starts when it cannot run."""
    storage = StudyStorage(spec)
    if storage.local is None and not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise StudyError(f"study.storage is {spec.study.storage}: give --tracking-uri (an MLflow server), since "
                         f"the default SQLite store needs a local folder")
    fresh = storage.local is not None and not storage.local.exists()
    lock = StudyLock(storage, break_lock)
    lock.acquire()  # before looking at the state: a second driver started a second later must not pass
    ours = False
    try:
        try:
            # What a killed driver of this study left (its local Ray's agents, unregistered checkpoints):
            # safe now that the lock says no driver of this study runs.
            stop_leftover_ray(storage)
            remove_orphan_checkpoints(storage)
            ours = True  # from here a Ray this driver starts is recorded; forgotten again at its end
            return _run_locked(spec, storage, address, tracking_uri, resume, force, verbose)
        except Exception as e:
            # A full disk (Train's checkpoint upload, the SQLite store, the outbox): one line naming the
            # folder and its free space, not a traceback; what was saved before is kept for --resume.
            what = disk_full(e) if storage.local is not None else ""
            if what and not isinstance(e, StudyError):
                raise StorageFull(storage_full_message(storage.local, what)) from e
            raise
    except (StudyError, SpecError, ConnectionError):
        if fresh:  # refused before anything ran: leave no folder behind
            lock.release()
            forget_ray_session(storage)
            _remove_if_empty(storage.local)
        raise
    finally:
        if ours:
            forget_ray_session(storage)
        lock.release()


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (or gone): keep it


def _run_locked(spec: Spec, storage: StudyStorage, address, tracking_uri, resume, force, verbose) -> StudyResult:
    exists = tune.Tuner.can_restore(storage.tune)
    if resume and not exists:
        raise StudyError(f"--resume: nothing to resume at {storage.tune}; run without --resume to start the study")
    if not resume and (exists or (storage.local and (storage.local / "tune").exists())):
        raise StudyError(
            f"study {spec.study.name!r} already exists at {storage.uri}; add --resume to continue it, "
            f"choose another name with --set study.name=NEW, or delete the folder to start over"
        )
    if resume:
        check_unchanged(spec, storage, force)
        check_tune_state(storage)  # Tune would start over silently from a truncated state file
        check_train_snapshots(storage)  # and Train would fail a trial whose checkpoint record is truncated
    uri = tracking.resolve_tracking_uri(tracking_uri, spec)
    check_reachable(uri)

    with ThreadPoolExecutor(1) as pool:
        store = pool.submit(tracking.prepare_store, uri)  # MLflow's store gets ready while Ray starts
        session = init_ray(address, verbose, dashboard=spec.study.scheduler.type == "asha")
        if session:  # a Ray of our own: if this driver is killed, the next start of the study stops what is left
            record_ray_session(storage, session)
        store.result()
    stop = GracefulStop().install()  # after ray.init, whose handler would abort the driver on SIGTERM
    try:
        return _run_tune(spec, storage, uri, resume, stop)
    finally:
        stop.uninstall()


def _run_tune(spec: Spec, storage: StudyStorage, uri: str, resume: bool, stop: GracefulStop) -> StudyResult:
    concurrency, configurations = plan(spec)
    num_samples = configurations * spec.study.repeats  # each repeat of a configuration is a Tune trial
    if not resume:
        storage.write(SNAPSHOT, json.dumps({"source": spec.source, "resolved": spec.resolved()}, indent=1))
    study_run = tracking.open_study_run(uri, spec)
    payload = TrialPayload.from_spec(spec, storage.train)
    trainable = tune.with_resources(tune.with_parameters(trial_driver, payload=payload), DRIVER_RESOURCES)
    recorder = tracking.MlflowTracking(uri, study_run, spec, storage.train,
                                       outbox=storage.local / tracking.OUTBOX if storage.local else None)
    guard = SpaceGuard(storage)  # first: stops the study before a full disk truncates its state
    callbacks = [guard, StopTrainRuns(spec), recorder, Progress(spec)]
    objectives = ", ".join(f"{o.mode} {o.metric}" for o in spec.study.objectives)
    trials = (f"{configurations} configurations × {spec.study.repeats} repeats = {num_samples} trials"
              if spec.study.repeats > 1 else f"{num_samples} trials")
    print(f"study {spec.study.name!r}: {trials}, up to {concurrency} at a time, {objectives}; "
          f"sampler {spec.study.sampler}, scheduler {spec.describe_scheduler()}; state in {storage.uri}", flush=True)
    if resume:
        tuner = tune.Tuner.restore(storage.tune, trainable=trainable, resume_unfinished=True, resume_errored=False)
        # Tune restores the callbacks pickled with the experiment; use this run's (tracking URI, clock).
        if getattr(tuner, "_local_tuner", None) is not None:
            tuner._local_tuner.get_run_config().callbacks = callbacks
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(spec, storage), scheduler=_scheduler(spec), num_samples=num_samples,
                max_concurrent_trials=concurrency,
                # The next trial's trial_driver runs in the process the last one ended in, its imports
                # done: seconds per trial. A trial that ASHA stops has its Train run aborted at once
                # (StopTrainRuns), so the kept process holds no training.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=storage.uri, callbacks=callbacks, verbose=0,
                                      # a trial whose process or node is lost is retried (from its checkpoint)
                                      failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures)),
        )
    grid = tuner.fit()
    if guard.short:  # stopped by the guard: the state is saved; MLflow has what it could take
        recorder.flush()
        raise guard.error()
    delivered = recorder.flush()
    # Tune marks trials it stopped on Ctrl-C TERMINATED like finished ones: what the tracking
    # callback recorded as they ended is what tells them apart.
    outcomes = {tid: recorder.outcome(tid) for tid in map(_trial_id, grid)}
    table = _table(grid, spec, outcomes)
    interrupted = len(outcomes) < num_samples or Status.INTERRUPTED in outcomes.values()
    front = ""
    # the comparison on the study run (once MLflow has every result), with importance unless it was stopped:
    # a batch system's grace period is short
    ranked = recorder.refresh(importance=not interrupted) if delivered else None
    if ranked is not None:
        table.insert(table.columns.get_loc("status") + 1, TAG_RANK, table["trial"].map(dict(zip(ranked["trial"], ranked[TAG_RANK]))).astype("Int64"))
        front = front_text(ranked, recorder.info)
    statuses = table["status"].value_counts()
    summary = {"study/trials_finished": float(statuses.get(Status.FINISHED, 0) + statuses.get(Status.STOPPED_EARLY, 0)),
               "study/trials_diverged": float(statuses.get(Status.DIVERGED, 0)),
               "study/trials_failed": float(statuses.get(Status.FAILED, 0))}
    for o in spec.study.objectives:
        best = table[o.metric].dropna() if o.metric in table else []
        if len(best):
            summary[f"best/{o.metric}"] = float(best.min() if o.mode == "min" else best.max())
    status = "KILLED" if interrupted else "FINISHED" if grid.num_errors < len(table) else "FAILED"
    undelivered = len(recorder.queue)
    if delivered:
        try:
            tracking.close_study_run(uri, study_run, summary, status)
        except Exception as e:  # noqa: BLE001 - the server went down at the very end
            if not tracking.unreachable(e):
                raise
            undelivered += 1
    return StudyResult(table, uri, storage.uri, study_run.experiment_id, study_run.run_id, grid.num_errors,
                       interrupted, front, undelivered, stop.received.name if stop.received else "")


OPTUNA_JOURNAL = "optuna.journal"  # in the study folder: what optuna-dashboard opens


def optuna_storage(spec: Spec, storage: StudyStorage):
    """Where Optuna records the study besides Tune's pickled searcher (for optuna-dashboard): a
    journal file in a local/NFS study folder, the spec's RDB URL, or None (kept in memory only)."""
    url = spec.study.optuna_storage
    if url == "none" or (not url and storage.local is None):  # an object store holds no journal file
        return None
    if url:
        return optuna.storages.RDBStorage(url)
    storage.local.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(storage.local / OPTUNA_JOURNAL)))


def _searcher(spec: Spec, storage: StudyStorage) -> RepeatSearch:
    """Optuna (one trial per configuration) inside RepeatSearch, which hands out each configuration
    study.repeats times and tells Optuna the mean (repeats 1: each trial its own configuration)."""
    metrics = [o.metric for o in spec.study.objectives]
    modes = [o.mode for o in spec.study.objectives]
    optuna_search = OptunaSearch(
        space=SpaceSampler(spec.space),
        metric=metrics if spec.multi_objective else metrics[0],
        mode=modes if spec.multi_objective else modes[0],
        sampler=make_sampler(spec),
        study_name=spec.study.name,
        storage=optuna_storage(spec, storage),
    )
    return RepeatSearch(optuna_search, spec.study.repeats, spec.base.train.seed, metrics)


def _scheduler(spec: Spec):
    s = spec.study.scheduler
    if s.type != "asha":
        return None
    # Rungs are counted in epochs, not Tune iterations: a resumed trial restarts Tune's
    # iteration count while its epoch continues. With repeats, configurations are compared on the
    # mean of their repeats at each rung (study.repeats.RepeatASHA).
    asha = RepeatASHA if spec.study.repeats > 1 else ASHAScheduler
    return asha(time_attr="epoch", metric=spec.primary.metric, mode=spec.primary.mode,
                         max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)


_ACCURACY = ("val/mre_mm", "val/sdr_2mm", "val/nme", "val/fr")  # shown in the final table when reported


def _trial_id(result) -> str:
    """A Tune result's trial id (a trial that never reported: its folder name)."""
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def _table(grid, spec: Spec, outcomes: dict[str, Status]) -> pd.DataFrame:
    """One row per trial: its outcome, searched values, objectives and a few accuracy columns."""
    objectives = [o.metric for o in spec.study.objectives]
    rows = []
    for res in grid:
        m = res.metrics or {}
        tid = _trial_id(res)
        config = res.config or {}
        row = {"trial": tid, TAG_CONFIG: config.get(TAG_CONFIG, tid), TAG_REPEAT: config.get(TAG_REPEAT, 0),
               "status": Status(outcomes.get(tid, Status.INTERRUPTED)).value}
        row.update({k: (res.config or {}).get(k) for k in spec.space})  # no config: failed before starting
        row["epoch"] = m.get("epoch")
        for key in dict.fromkeys([*objectives, *_ACCURACY, "train/loss", "cost/epoch_s"]):
            row[key] = m.get(key)
        rows.append(row)
    if not rows:  # interrupted before any trial reported
        return pd.DataFrame(columns=["trial", TAG_CONFIG, TAG_REPEAT, "status", *spec.space, "epoch", *objectives])
    df = pd.DataFrame(rows)
    # A face study has no mm metrics and a ceph study no NME: show only what some trial reported.
    df = df.drop(columns=[k for k in _ACCURACY if k not in objectives and k in df and df[k].isna().all()])
    return df.sort_values(spec.primary.metric, ascending=spec.primary.mode == "min", na_position="last",
                          ignore_index=True)
