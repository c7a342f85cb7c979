"""The contract between the study driver and the dashboards: MLflow tag names, trial statuses,
and how a trial's outcome is read. Both sides import this module; it imports neither.

    from study.schema import TAG_STATUS, Status
    client.set_tag(run_id, TAG_STATUS, Status.DIVERGED)      # a StrEnum: stored as "diverged"
    Status.FINISHED in RANKED                                 # True

A run's tags find it again after a restart (`tune.trial_id`, `study.name`); the Pareto tags are
written by dashboards/ and read by anyone comparing trials in MLflow.
"""

from __future__ import annotations

import pickle
from enum import StrEnum
from pathlib import Path

from trainables.config import Diverged

# Tags that find runs again after a restart.
TAG_STUDY = "study.name"
TAG_ROLE = "study.role"  # ROLE_STUDY on the parent run, ROLE_TRIAL on each child
ROLE_STUDY, ROLE_TRIAL = "study", "trial"
TAG_TRIAL = "tune.trial_id"
TAG_STATUS = "trial.status"  # a Status
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests trial runs under the study run
TAG_NODE = "ray.node_id"  # the node of the trial's first Train worker (rank 0)
TAG_NODE_IP = "ray.node_ip"
TAG_RESTARTS = "trial.restarts"  # times the trial resumed from its checkpoint after a lost worker, node or process
# Repeats (study.repeats > 1): each repeat is its own Tune trial and MLflow run; these group them.
TAG_CONFIG = "config.id"  # the configuration a run trains: the same for all its repeats
TAG_REPEAT = "config.repeat"  # 0 .. study.repeats-1; the run's train.seed is base seed + this
TAG_COMMIT = "mlflow.source.git.commit"  # MLflow's own name: its UI shows it on the run page
# Written by dashboards/ (the comparison) on every trial run.
TAG_FRONT, TAG_RANK = "pareto.front", "pareto.rank"
RESOLVED_ARTIFACT = "study.json"  # on the study run: the resolved spec (objectives, space)


def tag_filter(**tags: str) -> str:
    """An MLflow filter string for runs whose tags equal these values exactly:
    tag_filter(**{TAG_ROLE: ROLE_STUDY, TAG_STUDY: "quickstart"}).

    A value that could change the filter's meaning (a quote, a backslash, a backtick) is refused,
    never interpolated: spec names are validated to a safe set and trial ids are Tune's hex.
    """
    for key, value in tags.items():
        if any(c in str(value) for c in "'\\`\"") or "`" in key:
            raise ValueError(
                f"tag {key}: {value!r} cannot be used in an MLflow filter (quotes, backslashes and "
                f"backticks are not allowed in study names)"
            )
    return " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())


class Status(StrEnum):
    """Where a trial stands, as its MLflow run's `trial.status` tag says."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED_EARLY = "stopped early"  # ASHA ended it; Optuna got its last, partly trained value
    DIVERGED = "diverged"  # the training loss became NaN or infinite (the trainer's `Diverged`)
    FAILED = "failed"  # any other error
    INTERRUPTED = "interrupted"  # Ctrl-C or a lost driver; --resume continues it


FINAL = frozenset({Status.FINISHED, Status.STOPPED_EARLY, Status.DIVERGED, Status.FAILED})  # kept on --resume
RANKED = (Status.FINISHED, Status.STOPPED_EARLY)  # ended with values Optuna was told: the comparison ranks them


def is_diverged(error: BaseException | None) -> bool:
    """Whether an error is the trainer's `Diverged`, also when Ray wrapped it (RayTaskError
    subclasses the cause's type; Train's WorkerGroupError keeps each worker's error)."""
    if error is None:
        return False
    if isinstance(error, Diverged):
        return True
    workers = getattr(error, "worker_failures", None) or {}
    cause = getattr(error, "cause", None) or error.__cause__  # RayTaskError keeps the original as .cause
    return any(is_diverged(e) for e in workers.values()) or (cause is not error and is_diverged(cause))


def error_outcome(trial) -> Status:
    """DIVERGED or FAILED for a Tune trial that errored, from the exception Tune pickled beside the
    trial (its driver's local copy: the copy in the study storage is synced only later)."""
    path = getattr(trial, "pickled_error_file", None)
    try:
        error = pickle.loads(Path(path).read_bytes()) if path else None
    except Exception:  # noqa: BLE001 - an error we cannot load is an error, not a divergence
        error = None
    return Status.DIVERGED if is_diverged(error) else Status.FAILED
