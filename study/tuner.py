"""Ray Tune + Optuna over Ray Train: a validated spec in, a searched, tracked study out.

    result = run_study(spec, address=None, tracking_uri=None, resume=False, force=False)
    result.table          # one row per trial, best first
    result.interrupted    # True after Ctrl-C: `--resume` continues from the saved state

The walk of a study: check (the study exists or not; on --resume the saved state) -> start (the
tracking store, Ray, the plan; the study's MLflow run) -> build the Tuner (Optuna searcher and
ASHA, each trial a study.trial.trial_driver; callbacks study.tracking and study.progress on every
result) -> run -> summarise (the final table and the Pareto front). The fault guards around it,
and the order they run in, are study.faults's: the lock and a killed driver's leftovers before,
the resume checks, the free-space guard first of the callbacks, the MLflow outbox, a full disk
turned into one line at the end.
"""

from __future__ import annotations

import json
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
from study import faults, study_run, tracking  # noqa: E402
from study.cluster import init_ray, plan  # noqa: E402
from study.progress import Progress  # noqa: E402
from study.repeats import RepeatASHA, RepeatSearch  # noqa: E402
from study.schema import TAG_CONFIG, TAG_RANK, TAG_REPEAT, Status  # noqa: E402
from study.search import SpaceSampler, make_sampler  # noqa: E402
from study.spec import Spec, StudyError  # noqa: E402
from study.stop import GracefulStop  # noqa: E402
from study.storage import SNAPSHOT, StudyStorage  # noqa: E402
from study.trial import DRIVER_RESOURCES, StopTrainRuns, TrialPayload, trial_driver  # noqa: E402


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
    """Run (or with resume, continue) the study; one driver at a time (study.faults.driving). Raises
    StudyError, SpecError or ConnectionError before any trial starts when it cannot run."""
    storage = StudyStorage(spec)
    if storage.local is None and not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise StudyError(
            f"study.storage is {spec.study.storage}: give --tracking-uri (an MLflow server), since "
            f"the default SQLite store needs a local folder"
        )
    with faults.driving(storage, break_lock):  # the lock, a killed driver's leftovers; a full disk in one line
        return _run_locked(spec, storage, address, tracking_uri, resume, force, verbose)


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
        faults.on_resume(spec, storage, force)  # the spec, Tune's state and Train's records read back
    uri = study_run.resolve_tracking_uri(tracking_uri, spec)
    check_reachable(uri)

    with ThreadPoolExecutor(1) as pool:
        store = pool.submit(study_run.prepare_store, uri)  # MLflow's store gets ready while Ray starts
        session = init_ray(address, verbose, dashboard=spec.study.scheduler.type == "asha")
        faults.ray_started(storage, session)  # a Ray of our own: the next start stops what a kill leaves
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
    parent = study_run.open_study_run(uri, spec)
    payload = TrialPayload.from_spec(spec, storage.train)
    trainable = tune.with_resources(tune.with_parameters(trial_driver, payload=payload), DRIVER_RESOURCES)
    recorder = tracking.MlflowTracking(uri, parent, spec, storage.train, outbox=faults.outbox_path(storage.local))
    guard = faults.SpaceGuard(storage)  # first: stops the study before a full disk truncates its state
    callbacks = [guard, StopTrainRuns(spec), recorder, Progress(spec)]
    objectives = ", ".join(f"{o.mode} {o.metric}" for o in spec.study.objectives)
    trials = (
        f"{configurations} configurations × {spec.study.repeats} repeats = {num_samples} trials"
        if spec.study.repeats > 1
        else f"{num_samples} trials"
    )
    print(
        f"study {spec.study.name!r}: {trials}, up to {concurrency} at a time, {objectives}; "
        f"sampler {spec.study.sampler}, scheduler {spec.describe_scheduler()}; state in {storage.uri}",
        flush=True,
    )
    if resume:
        tuner = faults.restore(storage, trainable, callbacks)  # with this run's callbacks, not the pickled ones
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(spec, storage),
                scheduler=_build_scheduler(spec),
                num_samples=num_samples,
                max_concurrent_trials=concurrency,
                # The next trial's trial_driver runs in the process the last one ended in, its imports
                # done: seconds per trial. A trial that ASHA stops has its Train run aborted at once
                # (StopTrainRuns), so the kept process holds no training.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=storage.uri,
                callbacks=callbacks,
                verbose=0,
                # a trial whose process or node is lost is retried (from its checkpoint)
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            ),
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
        table.insert(
            table.columns.get_loc("status") + 1,
            TAG_RANK,
            table["trial"].map(dict(zip(ranked["trial"], ranked[TAG_RANK]))).astype("Int64"),
        )
        front = front_text(ranked, recorder.info)
    statuses = table["status"].value_counts()
    summary = {
        "study/trials_finished": float(statuses.get(Status.FINISHED, 0) + statuses.get(Status.STOPPED_EARLY, 0)),
        "study/trials_diverged": float(statuses.get(Status.DIVERGED, 0)),
        "study/trials_failed": float(statuses.get(Status.FAILED, 0)),
    }
    for o in spec.study.objectives:
        best = table[o.metric].dropna() if o.metric in table else []
        if len(best):
            summary[f"best/{o.metric}"] = float(best.min() if o.mode == "min" else best.max())
    status = "KILLED" if interrupted else "FINISHED" if grid.num_errors < len(table) else "FAILED"
    undelivered = len(recorder.queue)
    if delivered:
        try:
            study_run.close_study_run(uri, parent, summary, status)
        except Exception as e:  # noqa: BLE001 - the server went down at the very end
            if not faults.unreachable(e):
                raise
            undelivered += 1
    return StudyResult(
        table,
        uri,
        storage.uri,
        parent.experiment_id,
        parent.run_id,
        grid.num_errors,
        interrupted,
        front,
        undelivered,
        stop.received.name if stop.received else "",
    )


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


def _build_scheduler(spec: Spec):
    """The Tune scheduler the spec asks for: ASHA (RepeatASHA with repeats), or None (no early stopping)."""
    s = spec.study.scheduler
    if s.type != "asha":
        return None
    # Rungs are counted in epochs, not Tune iterations: a resumed trial restarts Tune's
    # iteration count while its epoch continues. With repeats, configurations are compared on the
    # mean of their repeats at each rung (study.repeats.RepeatASHA).
    asha = RepeatASHA if spec.study.repeats > 1 else ASHAScheduler
    return asha(
        time_attr="epoch",
        metric=spec.primary.metric,
        mode=spec.primary.mode,
        max_t=s.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


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
        row = {
            "trial": tid,
            TAG_CONFIG: config.get(TAG_CONFIG, tid),
            TAG_REPEAT: config.get(TAG_REPEAT, 0),
            "status": Status(outcomes.get(tid, Status.INTERRUPTED)).value,
        }
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
    return df.sort_values(
        spec.primary.metric, ascending=spec.primary.mode == "min", na_position="last", ignore_index=True
    )
