"""Ray Tune + Optuna over Ray Train: the wiring between a validated spec and the trainer.

Each Tune trial runs `trial_driver`, a light function (no CPU) that builds a `TorchTrainer`
for its config. The Train run is named after the Tune trial, so a restarted trial finds its own
checkpoints; `TuneReportCallback` forwards the workers' per-epoch metrics to Tune, whose
callbacks log them to MLflow on this driver.

    result = run_study(spec, address=None, tracking_uri=None, resume=False)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

# Tune's rich console output would interleave with our one-line-per-epoch progress.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna
import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from study import tracking
from study.space import SpaceSampler
from study.spec import Spec
from trainables.config import apply_overrides

# The Tune-side function only waits on its TorchTrainer: it asks for a token of memory and no
# CPU, so that two 1-CPU trials fit on a 2-CPU machine (the Train workers hold the real resources).
DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}
SAMPLERS = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


class StudyError(RuntimeError):
    """The study cannot start (exists already, nothing to resume, resources missing)."""


def trial_driver(config: dict, payload: dict) -> None:
    """One Tune trial: fit a TorchTrainer on base + the sampled dotted overrides."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.ray_adapter import train_loop_per_worker

    res = payload["resources"]
    per_worker = {"CPU": res["cpus_per_worker"]}
    if res["gpus_per_worker"] > 0:
        per_worker["GPU"] = res["gpus_per_worker"]
    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=apply_overrides(payload["base"], config),
        scaling_config=ScalingConfig(
            num_workers=res["workers"], use_gpu=res["gpus_per_worker"] > 0, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=f"train_{trial_id}",  # deterministic: a restarted trial resumes its own Train run
            storage_path=payload["train_storage"],
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
            logging_config=LoggingConfig(log_level="WARNING"),  # per-report INFO lines drown the progress
        ),
    )
    trainer.fit()


class Progress(tune.Callback):
    """One line per epoch and per finished trial, with the best value so far."""

    def __init__(self, spec: Spec):
        self.metric, self.mode = spec.primary.metric, spec.primary.mode
        self.trials, self.epochs = spec.study.trials, spec.base["train"]["epochs"]
        self.searched = list(spec.space)
        self.best: tuple[float, str] | None = None
        self.done = 0
        self.t0 = time.monotonic()

    def _better(self, v: float) -> bool:
        return self.best is None or (v < self.best[0] if self.mode == "min" else v > self.best[0])

    def on_trial_start(self, iteration, trials, trial, **info):
        params = ", ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.searched)
        print(f"[{self._clock()}] start  {trial.trial_id}  {params}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and self._better(v):
            self.best = (v, trial.trial_id)
        best = f"{self.best[0]:.3f} ({self.best[1]})" if self.best else "-"
        print(
            f"[{self._clock()}] epoch  {trial.trial_id}  {result.get('epoch')}/{trial.config.get('train.epochs', self.epochs)}  "
            f"train/loss={_fmt(result.get('train/loss'))}  {self.metric}={_fmt(v)}  best {self.metric}={best}",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        print(f"[{self._clock()}] done   {trial.trial_id}  ({self.done}/{self.trials} trials)", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        print(f"[{self._clock()}] FAILED {trial.trial_id}  ({self.done}/{self.trials}); "
              f"see {trial.local_path}/error.txt", flush=True)

    def _clock(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"


@dataclass
class StudyResult:
    table: "object"  # pandas DataFrame: one row per trial, best first
    tracking_uri: str
    study_dir: Path
    experiment_id: str
    parent_run_id: str
    num_errors: int


def run_study(
    spec: Spec,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    verbose: bool = False,
) -> StudyResult:
    study_dir = spec.storage_path / spec.study.name
    tune_dir = study_dir / "tune"
    if resume and not tune.Tuner.can_restore(str(tune_dir)):
        raise StudyError(f"--resume: nothing to resume at {tune_dir}; run without --resume to start the study")
    if not resume and tune_dir.exists():
        raise StudyError(
            f"study {spec.study.name!r} already exists at {study_dir}; add --resume to continue it, "
            f"choose another name with --set study.name=NEW, or delete the folder to start over"
        )
    uri = tracking.resolve_tracking_uri(tracking_uri, spec)
    tracking.check_reachable(uri)

    _init_ray(address, verbose)
    concurrency = _concurrency(spec)
    study_run = tracking.open_study_run(uri, spec)
    payload = {
        "base": spec.base,
        "resources": spec.resources.__dict__,
        "train_storage": str(study_dir / "train"),
    }
    trainable = tune.with_resources(tune.with_parameters(trial_driver, payload=payload), DRIVER_RESOURCES)
    callbacks = [tracking.MlflowTracking(uri, study_run, spec), Progress(spec)]
    print(f"study {spec.study.name!r}: {spec.study.trials} trials, up to {concurrency} at a time, "
          f"{spec.primary.mode} {spec.primary.metric}; state in {study_dir}", flush=True)
    if resume:
        tuner = tune.Tuner.restore(
            str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True, param_space=None
        )
    else:
        searcher = OptunaSearch(
            space=SpaceSampler(spec.space),
            metric=spec.primary.metric,
            mode=spec.primary.mode,
            sampler=SAMPLERS[spec.study.sampler](spec.study.seed),
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=spec.study.trials, max_concurrent_trials=concurrency
            ),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(study_dir), callbacks=callbacks, verbose=0
            ),
        )
    grid = tuner.fit()
    table = _table(grid, spec)
    best = table[spec.primary.metric].dropna()
    summary = {"study/trials_finished": float((table["status"] == "TERMINATED").sum()),
               "study/trials_failed": float(grid.num_errors)}
    if len(best):
        summary[f"best/{spec.primary.metric}"] = float(best.iloc[0])
    tracking.close_study_run(uri, study_run, summary, "FINISHED" if grid.num_errors < len(table) else "FAILED")
    return StudyResult(table, uri, study_dir, study_run.experiment_id, study_run.run_id, grid.num_errors)


def _init_ray(address: str | None, verbose: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Worker output (Train's per-report lines, placement-group notices) would bury the progress
    # lines; it stays in Ray's session logs, and a failed trial's traceback is in its error.txt.
    kwargs = dict(logging_level="WARNING", log_to_driver=verbose)
    if address:
        ray.init(address=address, **kwargs)
        print(f"joined Ray cluster at {address}: {_describe(ray.cluster_resources())}", flush=True)
    else:
        ray.init(include_dashboard=False, **kwargs)
        print(f"started a local Ray: {_describe(ray.cluster_resources())}", flush=True)


def _concurrency(spec: Spec) -> int:
    """Trials at once: the spec's, else what the cluster holds; fail if one trial cannot fit."""
    r = spec.resources
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    if need_cpu > cpus or need_gpu > gpus:
        raise StudyError(
            f"one trial needs {need_cpu:g} CPU and {need_gpu:g} GPU (resources: {r.workers} workers × "
            f"{r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU) but the cluster has {cpus:g} CPU, {gpus:g} GPU"
        )
    fits = min(int(cpus // need_cpu) if need_cpu else spec.study.trials,
               int(gpus // need_gpu) if need_gpu else spec.study.trials)
    if spec.study.concurrency > fits:
        print(f"warning: study.concurrency {spec.study.concurrency} is more than the cluster holds ({fits} trials "
              f"of {need_cpu:g} CPU, {need_gpu:g} GPU); the extra trials will wait for resources", flush=True)
    return max(1, min(spec.study.concurrency or fits, spec.study.trials))


_ACCURACY = ("val/mre_mm", "val/sdr_2mm", "val/nme", "val/fr")  # shown in the final table when reported


def _table(grid, spec: Spec):
    import pandas as pd

    rows = []
    for res in grid:
        m = res.metrics or {}
        row = {"trial": m.get("trial_id") or Path(res.path).name, "status": "ERROR" if res.error else "TERMINATED"}
        row.update({k: res.config.get(k) for k in spec.space})
        row["epoch"] = m.get("epoch")
        for key in dict.fromkeys([spec.primary.metric, *_ACCURACY, "train/loss", "cost/epoch_s"]):
            row[key] = m.get(key)
        rows.append(row)
    df = pd.DataFrame(rows)
    # A face study has no mm metrics and a ceph study no NME: show only what some trial reported.
    df = df.drop(columns=[k for k in _ACCURACY if k != spec.primary.metric and df[k].isna().all()])
    return df.sort_values(spec.primary.metric, ascending=spec.primary.mode == "min", na_position="last",
                          ignore_index=True)


def _describe(resources: dict) -> str:
    return ", ".join(f"{resources[k]:g} {k}" for k in ("CPU", "GPU") if k in resources) or "no resources"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
