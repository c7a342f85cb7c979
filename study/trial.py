"""One Tune trial = one Ray Train run of the shared trainer, and how a trial's end is read.

Each Tune trial runs `trial_driver`, a light function (no CPU) that builds a `TorchTrainer` for
its config. The Train run is named after the Tune trial, so a restarted trial finds its own
checkpoints; `TuneReportCallback` forwards the workers' per-epoch metrics to Tune, whose
callbacks (study.tracking, study.progress) log and print them on the driver.

    trainable = tune.with_parameters(trial_driver, payload=TrialPayload.from_spec(spec, train_storage))
"""

from __future__ import annotations

from dataclasses import dataclass

from ray import tune
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.exceptions import WorkerGroupError
from ray.tune.integration.ray_train import TuneReportCallback

from study.schema import Status, is_diverged
from study.spec import Spec
from trainables.config import Diverged, TrialConfig
from trainables.ray_adapter import train_loop_per_worker

# The Tune-side function only waits on its TorchTrainer: it asks for a token of memory and no
# CPU, so that two 1-CPU trials fit on a 2-CPU machine (the Train workers hold the real resources).
DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}


@dataclass(frozen=True)
class TrialPayload:
    """What every trial of a study shares, handed to `trial_driver` by Tune (pickled once)."""

    base: TrialConfig
    workers: int
    use_gpu: bool
    per_worker: dict[str, float]  # Ray resources of one Train worker
    train_storage: str  # where the Train runs keep their checkpoints
    primary: tuple[str, str]  # (metric, mode): which checkpoints Train keeps

    @classmethod
    def from_spec(cls, spec: Spec, train_storage: str) -> "TrialPayload":
        return cls(spec.base, spec.resources.workers, spec.resources.gpus_per_worker > 0,
                   spec.resources.per_worker(), train_storage, (spec.primary.metric, spec.primary.mode))


def train_run_name(trial_id: str) -> str:
    """The Train run of a Tune trial: deterministic, so a restarted trial resumes its own run."""
    return f"train_{trial_id}"


def trial_driver(config: dict, payload: TrialPayload) -> None:
    """One Tune trial: fit a TorchTrainer on the base config with the sampled dotted values."""
    trial_id = tune.get_context().get_trial_id()
    # The trainer checkpoints every epoch that improves the primary objective (besides every
    # train.checkpoint_every-th and the last), so the best epoch is among those Train keeps below.
    metric, mode = payload.primary
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=payload.base.with_values(
            {**config, "train.checkpoint_metric": metric, "train.checkpoint_mode": mode}).to_dict(),
        scaling_config=ScalingConfig(num_workers=payload.workers, use_gpu=payload.use_gpu,
                                     resources_per_worker=payload.per_worker),
        run_config=RunConfig(
            name=train_run_name(trial_id),
            storage_path=payload.train_storage,
            callbacks=[TuneReportCallback()],
            # The two best checkpointed epochs by the primary objective (their pictures and weights are
            # what the trial's MLflow run keeps); Train always keeps the latest too, which resumes.
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=payload.primary[0],
                                               checkpoint_score_order=payload.primary[1]),
            failure_config=FailureConfig(max_failures=0),
            logging_config=LoggingConfig(log_level="WARNING"),  # per-report INFO lines drown the progress
        ),
    )
    try:
        trainer.fit()
    except WorkerGroupError as e:
        # A NaN loss is an outcome of the recipe, not a crash: say so in one line (tracked as "diverged").
        for failure in e.worker_failures.values():
            if is_diverged(failure):
                raise Diverged(str(failure).strip().splitlines()[-1]) from None
        raise


def stopped_early(trial, spec: Spec) -> bool:
    """Whether a completed Tune trial ended before its last epoch: ASHA ends a trial like a
    finished one, and Optuna is told its last (partly trained) value as if it were complete;
    only the epoch count tells them apart."""
    last = (trial.last_result or {}).get("epoch")
    return last is not None and last < spec.trial_config(trial.config).train.epochs


def completed_outcome(trial, spec: Spec) -> Status:
    """FINISHED or STOPPED_EARLY, for a trial Tune reports complete."""
    return Status.STOPPED_EARLY if stopped_early(trial, spec) else Status.FINISHED
