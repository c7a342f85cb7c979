"""The log filters of the fault guards: Ray's and MLflow's tracebacks for faults that the study
already reports in one line (a full disk, a diverged trial, its own graceful stop). Installed when
study.faults is imported; the traceback stays in the trial's error.txt or Ray's session logs.
"""

from __future__ import annotations

import logging

from study.faults.disk import DISK_MESSAGES, disk_full
from study.schema import is_diverged


class _QuietFullDisk(logging.Filter):
    """Tune's traceback for a state sync that failed on a full disk: the guard stops the study at its
    next look and says so in one line; a truncated state file is what check_tune_state is for."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            record.getMessage().startswith(
                ("Saving experiment state to storage", "Experiment state snapshotting failed")
            )
            and disk_full(error)
        )


for _name in ("ray.tune.execution.experiment_state", "ray.tune.tune"):
    logging.getLogger(_name).addFilter(_QuietFullDisk())


class _QuietUnhandledFullDisk(logging.Filter):
    """Ray's `Unhandled error` traceback of a trial that failed on the full disk after the study
    stopped looking at it: the study's one error line says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Unhandled error") and any(m in message.lower() for m in DISK_MESSAGES))


logging.getLogger("ray._private.worker").addFilter(_QuietUnhandledFullDisk())


class _QuietStop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Stop signal received", "Experiment has been interrupted"))


def quiet_tunes_stop() -> None:
    """Drop Tune's own words for a graceful stop (they speak of Ctrl-C and Tuner.restore): installed by
    what stops the study (the disk guard, a SIGTERM or SIGHUP), which says in its own line what
    happened and what to run."""
    tune = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _QuietStop) for f in tune.filters):
        tune.addFilter(_QuietStop())


class _QuietTrialEnds(logging.Filter):
    """Drop Tune's traceback for a trial that diverged (a NaN loss is an outcome, which study.progress
    prints in one line) or that a full disk stopped (run_study ends the study with one line naming the
    folder); the traceback stays in the trial's error.txt."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage().startswith("Trial task failed") and (is_diverged(error) or disk_full(error)))


logging.getLogger("ray.tune.execution.tune_controller").addFilter(_QuietTrialEnds())


class _QuietStoreFullDisk(logging.Filter):
    """Drop MLflow's logged traceback of a SQLite store whose disk is full: the study ends with one line
    naming the folder and its free space (run_study), and what was not written waits in the outbox."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and disk_full(record.exc_info[1]))


logging.getLogger("mlflow.store.db.utils").addFilter(_QuietStoreFullDisk())
