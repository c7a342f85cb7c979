"""Steps that complete a spec from what it already says, run after its checks (study.spec.loading):
`auto` early stopping and ASHA's rungs, and the metric the trainer checkpoints by.
"""

from __future__ import annotations

from study.space import Param
from study.spec.model import StudySection, max_epochs
from trainables.config import TrialConfig


def resolve_scheduler(study: StudySection, base: TrialConfig, space: dict[str, Param]) -> None:
    """Resolve `auto` and ASHA's rungs, which are counted in epochs (grace_period 0: a tenth of them)."""
    sched = study.scheduler
    sched.type = sched.early_stopping(len(study.objectives))
    if sched.type != "asha":
        return
    sched.max_t = max_epochs(base, space)
    if sched.grace_period == 0:
        sched.grace_period = max(1, sched.max_t // 10)


def resolve_checkpoint_metric(study: StudySection, base: TrialConfig) -> None:
    """The trainer also checkpoints each epoch that improves the study's primary objective, so the
    best epoch is always among the checkpoints Train keeps (the trial's MLflow run logs its weights
    and pictures). Set here, on the base, so that MLflow's params show what the trainer used."""
    primary = study.objectives[0]
    if not base.train.checkpoint_metric and primary.metric.startswith(("val/", "train/", "cost/")):
        base.train.checkpoint_metric, base.train.checkpoint_mode = primary.metric, primary.mode
