"""One Tune trial = one Ray Train run of the shared trainer, and how a trial's end is read.

Each Tune trial runs `trial_driver`, a light function (no CPU) that builds a `TorchTrainer` for
its config. The Train run is named after the Tune trial, so a restarted trial finds its own
checkpoints; `TuneReportCallback` forwards the workers' per-epoch metrics to Tune, whose
callbacks (study.tracking, study.progress) log and print them on the driver.

    trainable = tune.with_parameters(trial_driver, payload=TrialPayload.from_spec(spec, train_storage))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.cloudpickle
from ray import tune
from ray.exceptions import RayActorError
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.context import TrainRunContext
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from ray.train.v2.api.exceptions import WorkerGroupError
from ray.tune.integration.ray_train import TuneReportCallback

from study.faults.disk import disk_full
from study.schema import Status, is_diverged
from study.spec import Spec, trainer_values
from trainables.config import Diverged, TrialConfig
from trainables.checkpoint import BROKEN, TRAIN_SNAPSHOT, TrainRun, filesystem
from trainables.ray_adapter import DIVERGED, FALLBACK_CHECKPOINT, train_loop_per_worker

# Re-exported: study.progress, study.tracking and the tests read a resumed trial's result keys here.
from trainables.ray_adapter import RESUMED_CHECKPOINT, RESUMED_FROM  # noqa: F401

# The Tune-side function only waits on its TorchTrainer: it asks for a token of memory and no
# CPU, so that two 1-CPU trials fit on a 2-CPU machine (the Train workers hold the real resources).
DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}
# Train's controller polls its workers this often (Ray's default 2 s): each epoch's result and each
# trial's end wait up to one poll. Propagated by Train to the controller; a user's own value wins.
HEALTH_CHECK_INTERVAL_S = "0.5"
# How long Tune waits for a stopped trial's function to return before it gives up reusing the process
# (Ray's default 2 s): an ASHA-stopped trial aborts its Train run first (StopTrainRuns).
THREAD_TIMEOUT_S = "10"
KV_NAMESPACE = "landmark-study"  # Ray's internal key-value store: the Train controllers of running trials
FAILED = "failed"


@dataclass(frozen=True)
class TrialPayload:
    """What every trial of a study shares, handed to `trial_driver` by Tune (pickled once)."""

    base: TrialConfig
    workers: int
    use_gpu: bool
    per_worker: dict[str, float]  # Ray resources of one Train worker
    train_storage: str  # where the Train runs keep their checkpoints
    primary: tuple[str, str]  # (metric, mode): which checkpoints Train keeps
    max_failures: int  # worker-group restarts from the latest checkpoint; -1 = no limit

    @classmethod
    def from_spec(cls, spec: Spec, train_storage: str) -> "TrialPayload":
        return cls(
            spec.base,
            spec.resources.workers,
            spec.resources.gpus_per_worker > 0,
            spec.resources.per_worker(),
            train_storage,
            (spec.primary.metric, spec.primary.mode),
            spec.resources.max_failures,
        )


RESTARTS = "restarts"  # result key: worker-group restarts of this Train run so far (no "/": not a metric)


class ReportWithRestarts(TuneReportCallback):
    """TuneReportCallback that also counts the worker-group failures Train restarts from (it runs
    on the Train controller, which outlives its worker groups) and stamps each result with them."""

    def __init__(self, outcome: "_Outcome"):
        super().__init__()
        self.restarts = 0
        self.outcome = outcome  # where a diverged trial's message goes (Train's result keeps only checkpointed reports)

    def after_exception(self, run_context: TrainRunContext, worker_exceptions: dict[int, Exception]):
        self.restarts += 1

    def after_report(self, run_context, metrics, checkpoint):
        if DIVERGED in metrics[0]:  # the workers' last word: not an epoch (Tune would want the objectives in
            self.outcome.save(DIVERGED, metrics[0][DIVERGED])  # it); trial_driver raises Diverged from this
            return
        super().after_report(run_context, [{**metrics[0], RESTARTS: self.restarts}, *metrics[1:]], checkpoint)


class PublishController(ControllerCallback):
    """Runs on the trial's Train controller: leaves a handle to it in Ray's key-value store, so that
    the driver can abort the Train run of a trial that ASHA stopped (abort_train_run). Tune keeps a
    stopped trial's process for the next trial, and tells the function to stop only when that
    trial arrives; until then the Train run would go on training."""

    def __init__(self, key: bytes):
        self.key = key

    def after_controller_start(self, train_run_context: TrainRunContext):
        handle = ray.get_runtime_context().current_actor
        _internal_kv_put(self.key, ray.cloudpickle.dumps(handle), overwrite=True, namespace=KV_NAMESPACE)


def _controller_key(job_id: str, trial_id: str) -> bytes:
    return f"{job_id}/{train_run_name(trial_id)}".encode()


def _stop_key(key: bytes) -> bytes:
    return key + b"/stop"


def abort_train_run(trial_id: str) -> bool:
    """Abort the Train run of a running trial of this driver's study (Train's own abort: the workers
    stop, the controller exits); the trial's function then returns normally. -> whether one was found."""
    key = _controller_key(ray.get_runtime_context().get_job_id(), trial_id)
    blob = _internal_kv_get(key, namespace=KV_NAMESPACE)
    if blob is None:
        return False  # its Train run ended already, or never started
    _internal_kv_put(_stop_key(key), b"1", overwrite=True, namespace=KV_NAMESPACE)
    ray.cloudpickle.loads(blob).abort.remote()
    return True


class StopTrainRuns(tune.Callback):
    """Tune callback: a trial that the scheduler stopped early gets its Train run aborted at once."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def on_trial_complete(self, iteration, trials, trial, **info):
        if stopped_early(trial, self.spec):
            abort_train_run(trial.trial_id)


def train_run_name(trial_id: str) -> str:
    """The Train run of a Tune trial: deterministic, so a restarted trial resumes its own run."""
    return f"train_{trial_id}"


class _WithoutRayData:
    """Train gives every run a DatasetManager actor and sends Ray Data's context to each worker,
    whether or not the run has Ray datasets: a process more per trial, and Ray Data imported in it
    and in every worker (benchmarks/README.md, "Per-trial start-up"). The trainer reads its own
    files and passes no datasets, so that callback is left out."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]


class _SingleWorkerTrainer(_WithoutRayData, DataParallelTrainer):
    pass


def _trainer_class(workers: int) -> type[DataParallelTrainer]:
    """TorchTrainer where workers train together (DDP needs its process group); one worker needs no
    backend, so its Train controller never imports torch (seconds of every trial's start-up)."""
    if workers == 1:
        return _SingleWorkerTrainer
    from ray.train.torch import TorchTrainer

    return type("TorchTrainer", (_WithoutRayData, TorchTrainer), {})


def trial_driver(config: dict, payload: TrialPayload) -> None:
    """One Tune trial: fit a TorchTrainer on the base config with the sampled dotted values.

    Tune retries this function when its process is lost (a node died: resources.max_failures);
    Train restarts the worker group when a worker dies. An outcome that a retry cannot change (a
    NaN loss, or Train's restarts used up) is written beside the Train run, so that a retry ends
    at once with the same error instead of training again.
    """
    trial_id = tune.get_context().get_trial_id()
    for name, value in (
        ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S),
        ("TUNE_FUNCTION_THREAD_TIMEOUT_S", THREAD_TIMEOUT_S),
    ):
        os.environ.setdefault(name, value)  # this process's: Train hands the first on to the controller
    key = _controller_key(ray.get_runtime_context().get_job_id(), trial_id)
    outcome = _Outcome(payload.train_storage, train_run_name(trial_id))
    outcome.raise_if_final()
    loop_config = payload.base.with_values(trainer_values(config)).to_dict()  # no config.id/.repeat
    fallback = fallback_checkpoint(payload.train_storage, train_run_name(trial_id))
    if fallback:
        loop_config[FALLBACK_CHECKPOINT] = fallback
    trainer = _trainer_class(payload.workers)(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=payload.workers, use_gpu=payload.use_gpu, resources_per_worker=payload.per_worker
        ),
        run_config=RunConfig(
            name=train_run_name(trial_id),
            storage_path=payload.train_storage,
            callbacks=[ReportWithRestarts(outcome), PublishController(key)],
            # The two best checkpointed epochs by the primary objective (their pictures and weights are
            # what the trial's MLflow run keeps); Train always keeps the latest too, which resumes. The
            # trainer checkpoints every epoch that improves it (train.checkpoint_metric, set by the spec).
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=payload.primary[0], checkpoint_score_order=payload.primary[1]
            ),
            # A dead worker or node (SIGKILL, OOM, preemption) restarts the worker group from the
            # latest checkpoint; a NaN loss is not retried (see the except below).
            failure_config=FailureConfig(max_failures=payload.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # per-report INFO lines drown the progress
        ),
    )
    try:
        trainer.fit()
    except RayActorError:
        if _internal_kv_get(_stop_key(key), namespace=KV_NAMESPACE) is not None:
            return  # aborted because the scheduler stopped the trial (abort_train_run): nothing failed
        raise
    except WorkerGroupError as e:
        # A NaN loss is an outcome of the recipe, not a crash: say so in one line (tracked as "diverged").
        for failure in e.worker_failures.values():
            if disk_full(failure):  # not the recipe's fault: no final outcome, so a resume trains it again
                raise
            if is_diverged(failure):
                outcome.save(DIVERGED, str(failure).strip().splitlines()[-1])
                raise Diverged(str(failure).strip().splitlines()[-1]) from None
        outcome.save(FAILED, f"the workers failed {payload.max_failures + 1} time(s): {str(e).strip()[:2000]}")
        raise
    finally:
        for k in (key, _stop_key(key)):
            _internal_kv_del(k, namespace=KV_NAMESPACE)
    outcome.raise_if_final()  # a NaN loss ended the run normally (see ReportWithRestarts): "diverged", one line


class TrialFailed(RuntimeError):
    """The trial's workers failed more often than resources.max_failures allows (on a retry by Tune)."""


def fallback_checkpoint(train_storage: str, run_name: str) -> str | None:
    """The newest complete checkpoint folder of a Train run whose record (checkpoint_manager_snapshot.json)
    was moved aside as unreadable (study.faults.integrity.check_train_snapshots), else None. Local/NFS only."""
    if "://" in train_storage:
        return None
    run = Path(train_storage) / run_name
    if (run / TRAIN_SNAPSHOT).exists() or not (run / f"{TRAIN_SNAPSHOT}{BROKEN}").exists():
        return None  # Train's own record decides
    newest = TrainRun(run).newest_complete()
    return str(newest[1].resolve()) if newest else None


def checkpoint_history(train_storage: str, trial_id: str, checkpoint: str) -> list[dict]:
    """The metrics of every epoch up to checkpoint `checkpoint` (a folder name) of the trial's Train
    run, in order (its history.json); [] for a checkpoint written before history.json existed."""
    return TrainRun(f"{train_storage}/{train_run_name(trial_id)}").history(checkpoint)


def furthest_history(train_storage: str, trial_id: str) -> list[dict]:
    """The history.json of the trial's furthest checkpoint (the most epochs; registered by Train or not,
    as long as its history reads), else []. A trial that fails for good is never resumed, so the epochs
    its workers checkpointed just before they died would otherwise never reach MLflow."""
    return TrainRun(f"{train_storage}/{train_run_name(trial_id)}").furthest_history()


class _Outcome:
    """`outcome.json` beside a Train run: a final outcome that a retry of the trial must not redo."""

    def __init__(self, train_storage: str, run_name: str):
        self.fs, root = filesystem(train_storage)
        self.folder = f"{root}/{run_name}"
        self.path = f"{self.folder}/outcome.json"

    def save(self, kind: str, message: str) -> None:
        self.fs.create_dir(self.folder, recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps({"outcome": kind, "message": message}).encode())

    def raise_if_final(self) -> None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                saved = json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return
        if saved.get("outcome") == DIVERGED:
            raise Diverged(saved["message"])
        raise TrialFailed(saved.get("message", "failed before"))


def stopped_early(trial, spec: Spec) -> bool:
    """Whether a completed Tune trial ended before its last epoch: ASHA ends a trial like a
    finished one, and Optuna is told its last (partly trained) value as if it were complete;
    only the epoch count tells them apart."""
    last = (trial.last_result or {}).get("epoch")
    return last is not None and last < spec.trial_config(trial.config).train.epochs


def completed_outcome(trial, spec: Spec) -> Status:
    """FINISHED or STOPPED_EARLY, for a trial Tune reports complete."""
    return Status.STOPPED_EARLY if stopped_early(trial, spec) else Status.FINISHED
