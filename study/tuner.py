"""Ray Tune + Optuna over Ray Train: the wiring between a validated spec and the trainer.

Each Tune trial runs `trial_driver`, a light function (no CPU) that builds a `TorchTrainer`
for its config. The Train run is named after the Tune trial, so a restarted trial finds its own
checkpoints; `TuneReportCallback` forwards the workers' per-epoch metrics to Tune, whose
callbacks log them to MLflow on this driver.

    result = run_study(spec, address=None, tracking_uri=None, resume=False, force=False)
    result.interrupted   # True after Ctrl-C: `--resume` continues from the saved state
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

# Tune's rich console output would interleave with our one-line-per-epoch progress.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna
import pyarrow.fs
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from study import tracking
from study.tracking import stopped_early
from study.space import SpaceSampler, make_sampler
from study.spec import Spec, SpecError, resource_problems, spec_diff, workers_that_fit
from trainables.config import apply_overrides

# The Tune-side function only waits on its TorchTrainer: it asks for a token of memory and no
# CPU, so that two 1-CPU trials fit on a 2-CPU machine (the Train workers hold the real resources).
DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}
SNAPSHOT = "study.json"  # the resolved spec a study started with, beside its Tune state


class StudyError(RuntimeError):
    """The study cannot start (exists already, nothing to resume, spec changed, storage unusable)."""


class StudyStorage:
    """Where a study keeps its Tune and Train state: `<study.storage>/<study.name>/{tune,train}`.

    study.storage is a local folder (relative to the working directory) or a URI that pyarrow
    understands (file://, s3://, gs://, ...); on a multi-node cluster it must be shared by all nodes.
    """

    def __init__(self, spec: Spec):
        self.uri = spec.location
        self.local = None if "://" in self.uri else Path(self.uri)
        self.fs, self.path = pyarrow.fs.FileSystem.from_uri(self.local.as_uri() if self.local else self.uri)

    @property
    def tune(self) -> str:
        return f"{self.uri}/tune"

    @property
    def train(self) -> str:
        return f"{self.uri}/train"

    def read(self, name: str) -> str | None:
        try:
            with self.fs.open_input_stream(f"{self.path}/{name}") as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    def write(self, name: str, text: str) -> None:
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{name}") as f:
            f.write(text.encode())


def train_run_name(trial_id: str) -> str:
    """The Train run of a Tune trial: deterministic, so a restarted trial resumes its own run."""
    return f"train_{trial_id}"


def trial_driver(config: dict, payload: dict) -> None:
    """One Tune trial: fit a TorchTrainer on base + the sampled dotted overrides."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.exceptions import WorkerGroupError
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.ray_adapter import train_loop_per_worker
    from trainables.trainer import Diverged

    res = payload["resources"]
    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=apply_overrides(payload["base"], config),
        scaling_config=ScalingConfig(
            num_workers=res["workers"], use_gpu=res["gpus_per_worker"] > 0, resources_per_worker=payload["per_worker"]
        ),
        run_config=RunConfig(
            name=train_run_name(trial_id),
            storage_path=payload["train_storage"],
            callbacks=[TuneReportCallback()],
            # The two best epochs by the primary objective (their pictures and weights are what the
            # trial's MLflow run keeps); Train always keeps the latest too, which resumes.
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=payload["primary"][0],
                                               checkpoint_score_order=payload["primary"][1]),
            failure_config=FailureConfig(max_failures=0),
            logging_config=LoggingConfig(log_level="WARNING"),  # per-report INFO lines drown the progress
        ),
    )
    try:
        trainer.fit()
    except WorkerGroupError as e:
        # A NaN loss is an outcome of the recipe, not a crash: say so in one line (tracked as "diverged").
        for failure in e.worker_failures.values():
            if isinstance(failure, Diverged) or "Diverged" in type(failure).__name__:
                raise Diverged(str(failure).strip().splitlines()[-1]) from None
        raise


class Progress(tune.Callback):
    """One line per epoch and per finished trial, with the best value of each objective so far."""

    def __init__(self, spec: Spec):
        self.objectives = [(o.metric, o.mode) for o in spec.study.objectives]
        self.trials, self.epochs = spec.study.trials, spec.base["train"]["epochs"]
        self.searched = list(spec.space)
        self.best: dict[str, tuple[float, str]] = {}
        self.done = 0
        self.t0 = time.monotonic()

    def __setstate__(self, state):  # restored with the experiment on --resume: restart the clock
        self.__dict__.update(state)
        self.t0 = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        params = ", ".join(f"{k}={_fmt(trial.config[k])}" for k in self.searched if k in trial.config)
        print(f"[{self._clock()}] start  {trial.trial_id}  {params}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        values = []
        for metric, mode in self.objectives:
            v = result.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                old = self.best.get(metric)
                if old is None or (v < old[0] if mode == "min" else v > old[0]):
                    self.best[metric] = (v, trial.trial_id)
            values.append(f"{metric}={_fmt(v)}")
        best = "  ".join(f"{m}={self.best[m][0]:.4g} ({self.best[m][1]})" for m, _ in self.objectives if m in self.best)
        print(
            f"[{self._clock()}] epoch  {trial.trial_id}  {result.get('epoch')}/{trial.config.get('train.epochs', self.epochs)}  "
            f"train/loss={_fmt(result.get('train/loss'))}  {'  '.join(values)}  | best {best or '-'}",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done = _ended(trials, trial)
        early = stopped_early(trial, self.epochs)
        outcome = f"stopped early at epoch {trial.last_result.get('epoch')}" if early else "finished"
        print(f"[{self._clock()}] {outcome}  {trial.trial_id}  ({self.done}/{self.trials} trials done, "
              f"{_running(trials, trial)})", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done = _ended(trials, trial)
        if tracking.diverged(trial):
            epoch = (trial.last_result or {}).get("epoch", 0) + 1
            print(f"[{self._clock()}] diverged {trial.trial_id} at epoch {epoch} (NaN/inf train/loss)  "
                  f"({self.done}/{self.trials} trials done)", flush=True)
            return
        print(f"[{self._clock()}] FAILED {trial.trial_id}  ({self.done}/{self.trials}); "
              f"see {trial.local_path}/error.txt", flush=True)

    def _clock(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"


def _ended(trials, ending) -> int:
    """Trials done, counting those a resumed study finished before (Tune has not yet marked `ending`)."""
    return sum(t.status in ("TERMINATED", "ERROR") and t is not ending for t in trials) + 1


def _running(trials, ending) -> str:
    # Tune still counts the ending trial as RUNNING when it calls the callbacks.
    return f"{sum(t.status == 'RUNNING' and t is not ending for t in trials)} running"


@dataclass
class StudyResult:
    table: "object"  # pandas DataFrame: one row per trial, best first
    tracking_uri: str
    study_dir: str
    experiment_id: str
    parent_run_id: str
    num_errors: int
    interrupted: bool  # Ctrl-C: the state is saved and --resume continues
    front: str = ""  # the Pareto front as a table (dashboards.pareto.front_text)


def run_study(
    spec: Spec,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    force: bool = False,
    verbose: bool = False,
) -> StudyResult:
    storage = StudyStorage(spec)
    exists = tune.Tuner.can_restore(storage.tune)
    if resume and not exists:
        raise StudyError(f"--resume: nothing to resume at {storage.tune}; run without --resume to start the study")
    if not resume and (exists or (storage.local and (storage.local / "tune").exists())):
        raise StudyError(
            f"study {spec.study.name!r} already exists at {storage.uri}; add --resume to continue it, "
            f"choose another name with --set study.name=NEW, or delete the folder to start over"
        )
    if resume:
        _check_unchanged(spec, storage, force)
    if storage.local is None and not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise StudyError(f"study.storage is {spec.study.storage}: give --tracking-uri (an MLflow server), since "
                         f"the default SQLite store needs a local folder")
    uri = tracking.resolve_tracking_uri(tracking_uri, spec)
    tracking.check_reachable(uri)

    _init_ray(address, verbose, dashboard=spec.study.scheduler.type == "asha")
    concurrency, num_samples = _plan(spec)
    if not resume:
        storage.write(SNAPSHOT, json.dumps({"source": spec.source, "resolved": spec.resolved()}, indent=1))
    study_run = tracking.open_study_run(uri, spec)
    payload = {
        "base": spec.base,
        "resources": {"workers": spec.resources.workers, "gpus_per_worker": spec.resources.gpus_per_worker},
        "per_worker": spec.resources.per_worker(),
        "train_storage": storage.train,
        "primary": (spec.primary.metric, spec.primary.mode),
    }
    trainable = tune.with_resources(tune.with_parameters(trial_driver, payload=payload), DRIVER_RESOURCES)
    recorder = tracking.MlflowTracking(uri, study_run, spec, storage.train)
    callbacks = [recorder, Progress(spec)]
    objectives = ", ".join(f"{o.mode} {o.metric}" for o in spec.study.objectives)
    print(f"study {spec.study.name!r}: {num_samples} trials, up to {concurrency} at a time, {objectives}; "
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
                search_alg=_searcher(spec), scheduler=_scheduler(spec), num_samples=num_samples,
                max_concurrent_trials=concurrency,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=storage.uri, callbacks=callbacks, verbose=0),
        )
    grid = tuner.fit()
    # Tune marks trials it stopped on Ctrl-C TERMINATED like finished ones: what the tracking
    # callback recorded as they ended is what tells them apart.
    outcomes = {tid: recorder.outcome(tid) for tid in map(_trial_id, grid)}
    table = _table(grid, spec, outcomes)
    interrupted = len(outcomes) < num_samples or "interrupted" in outcomes.values()
    front = ""
    ranked = recorder.refresh(importance=True)  # the comparison on the study run, with importance
    if ranked is not None:
        from dashboards.pareto import TAG_RANK, front_text

        table.insert(2, TAG_RANK, table["trial"].map(dict(zip(ranked["trial"], ranked[TAG_RANK]))).astype("Int64"))
        front = front_text(ranked, recorder.info)
    statuses = table["status"].value_counts()
    summary = {"study/trials_finished": float(statuses.get("finished", 0) + statuses.get("stopped early", 0)),
               "study/trials_diverged": float(statuses.get("diverged", 0)),
               "study/trials_failed": float(statuses.get("failed", 0))}
    for o in spec.study.objectives:
        best = table[o.metric].dropna() if o.metric in table else []
        if len(best):
            summary[f"best/{o.metric}"] = float(best.min() if o.mode == "min" else best.max())
    status = "KILLED" if interrupted else "FINISHED" if grid.num_errors < len(table) else "FAILED"
    tracking.close_study_run(uri, study_run, summary, status)
    return StudyResult(table, uri, storage.uri, study_run.experiment_id, study_run.run_id, grid.num_errors,
                       interrupted, front)


def _check_unchanged(spec: Spec, storage: StudyStorage, force: bool) -> None:
    """Refuse to resume with an edited spec (or, with force, say what does and does not apply)."""
    saved = storage.read(SNAPSHOT)
    if saved is None:
        print(f"warning: {storage.uri} has no {SNAPSHOT}; cannot check the spec against the one it started with")
        return
    old = json.loads(saved)["resolved"]
    new = spec.resolved()
    changes = spec_diff(old, new)
    if not changes:
        return
    lines = "\n".join(f"    {c}" for c in changes)
    if not force:
        raise StudyError(
            f"the spec of study {spec.study.name!r} changed since it started ({storage.uri}/{SNAPSHOT}):\n{lines}\n"
            f"  resume with the original spec, or add --force to resume anyway"
        )
    kept = [c for c in changes if c.split(".")[0] in ("study", "space")]
    print(f"warning: resuming with an edited spec (--force):\n{lines}", flush=True)
    if kept:
        print("  study: and space: changes do not apply: the saved search keeps its objectives, sampler and "
              "space; base: and resources: changes apply to the trials still to run", flush=True)
    # What the study runs with from now on: the new base and resources, the original search.
    storage.write(SNAPSHOT, json.dumps({"source": spec.source, "resolved": {**new, "study": old["study"],
                                                                              "space": old["space"]}}, indent=1))


def _searcher(spec: Spec) -> OptunaSearch:
    metrics = [o.metric for o in spec.study.objectives]
    modes = [o.mode for o in spec.study.objectives]
    return OptunaSearch(
        space=SpaceSampler(spec.space),
        metric=metrics if spec.multi_objective else metrics[0],
        mode=modes if spec.multi_objective else modes[0],
        sampler=make_sampler(spec),
    )


def _scheduler(spec: Spec):
    s = spec.study.scheduler
    if s.type != "asha":
        return None
    # Rungs are counted in epochs, not Tune iterations: a resumed trial restarts Tune's
    # iteration count while its epoch continues.
    return ASHAScheduler(time_attr="epoch", metric=spec.primary.metric, mode=spec.primary.mode,
                         max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _init_ray(address: str | None, verbose: bool, dashboard: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Worker output (Train's per-report lines, placement-group notices) would bury the progress
    # lines; it stays in Ray's session logs, and a failed trial's traceback is in its error.txt.
    kwargs = dict(logging_level="WARNING", log_to_driver=verbose)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise StudyError(f"cannot join the Ray cluster at {address}: {e}") from None
        print(f"joined Ray cluster at {address}: {_describe(ray.cluster_resources())} "
              f"on {len(_alive_nodes())} node(s)", flush=True)
    else:
        # When ASHA stops a trial, Tune kills its driver ungracefully, and Train V2 frees that
        # trial's placement group only through the state API, which the dashboard serves: without
        # it each stopped trial keeps its CPUs and the study stalls. The dashboard costs ~10 s to
        # start, so it runs only when trials can be stopped. Clusters started by `ray start` have it.
        # address="local": a new Ray of our own, even when a `ray start` cluster runs on this machine
        # (ray.init() would silently join it); joining one is what --address auto is for.
        if dashboard:
            # Ray's state API, run inside workers, finds the dashboard through the machine's most
            # recently started Ray (/tmp/ray/ray_current_cluster), which need not be this one: name
            # ours to every worker explicitly.
            port = _free_port()
            kwargs.update(dashboard_port=port,
                          runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1", **kwargs)
        print(f"started a local Ray: {_describe(ray.cluster_resources())}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive_nodes() -> list[dict[str, float]]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def _plan(spec: Spec) -> tuple[int, int]:
    """(trials at once, trials in all). Fails, naming the resources: key, if no trial can be placed."""
    nodes = _alive_nodes()
    problems = resource_problems(spec.resources, nodes)
    if problems:
        raise SpecError(spec.source, problems + [f"(the cluster: {_describe(ray.cluster_resources())} on {len(nodes)} node(s))"])
    trials = spec.study.trials
    if spec.study.sampler == "grid":
        points = len(spec.grid())
        if trials != points:
            print(f"note: the grid has {points} points; running {min(trials, points)} of them"
                  + (" (in a seeded random order)" if trials < points else f", not study.trials {trials}"), flush=True)
        trials = min(trials, points)
    need = spec.resources.per_worker()
    fits = max(1, workers_that_fit(spec.resources, nodes) // spec.resources.workers)
    if spec.study.concurrency > fits:
        print(f"warning: study.concurrency {spec.study.concurrency} is more than the cluster holds ({fits} trials "
              f"of {spec.resources.workers} × {_describe(need)}); the extra trials will wait", flush=True)
    return max(1, min(spec.study.concurrency or fits, trials)), trials


_ACCURACY = ("val/mre_mm", "val/sdr_2mm", "val/nme", "val/fr")  # shown in the final table when reported


def _trial_id(result) -> str:
    """A Tune result's trial id (a trial that never reported: its folder name)."""
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def _table(grid, spec: Spec, outcomes: dict[str, str]):
    """One row per trial: its outcome, searched values, objectives and a few accuracy columns."""
    import pandas as pd

    objectives = [o.metric for o in spec.study.objectives]
    rows = []
    for res in grid:
        m = res.metrics or {}
        tid = _trial_id(res)
        row = {"trial": tid, "status": outcomes.get(tid, "interrupted")}
        row.update({k: (res.config or {}).get(k) for k in spec.space})  # no config: failed before starting
        row["epoch"] = m.get("epoch")
        for key in dict.fromkeys([*objectives, *_ACCURACY, "train/loss", "cost/epoch_s"]):
            row[key] = m.get(key)
        rows.append(row)
    if not rows:  # interrupted before any trial reported
        return pd.DataFrame(columns=["trial", "status", *spec.space, "epoch", *objectives])
    df = pd.DataFrame(rows)
    # A face study has no mm metrics and a ceph study no NME: show only what some trial reported.
    df = df.drop(columns=[k for k in _ACCURACY if k not in objectives and k in df and df[k].isna().all()])
    return df.sort_values(spec.primary.metric, ascending=spec.primary.mode == "min", na_position="last",
                          ignore_index=True)


def _describe(resources: dict) -> str:
    """'2 CPU, 1 GPU, 1 worker_node': CPU and GPU first, then custom resources by name (Ray's order varies)."""
    shown = [k for k in resources if k in ("CPU", "GPU") or not k.startswith(
        ("node:", "memory", "object_store_memory", "accelerator_type"))]
    shown.sort(key=lambda k: (k not in ("CPU", "GPU"), k))
    return ", ".join(f"{resources[k]:g} {k}" for k in shown) or "no resources"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
