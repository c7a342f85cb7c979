"""The fault guards of a study, one module each, and the one place that says when each runs.

Before a study starts (study.tuner.run_study), in this order:
  1. lock.StudyLock             one driver per study: refuse, or take over the lock of a driver that is gone
  2. leftovers                  what a killed driver left: its local Ray's processes, unregistered checkpoints
  3. on --resume: on_resume     the spec is the one it started with (study.storage.check_unchanged), Tune's
                                state reads back (integrity.check_tune_state), and Train's records of its
                                runs (integrity.check_train_snapshots: a truncated one is moved aside)
  4. after Ray starts           leftovers.record_ray_session: what the next start stops if this driver is killed
  5. restore (on --resume)      Tune's saved experiment, with this session's callbacks

While trials run, around each trial:
  6. space_guard.SpaceGuard     the first Tune callback: stops the study while the storage has room for its state
  7. outbox.Outbox              MLflow events wait, in order, while the tracking server does not answer
                                (study.tracking.MlflowTracking delivers through it)
  8. in each trial              study.trial.fallback_checkpoint (a Train record moved aside in 3), and in the
                                worker (trainables.ray_adapter) an incomplete checkpoint falls back to the newest
                                complete one (trainables.checkpoint.TrainRun), and driver_alive before each write
  9. quiet                      log filters: no traceback for a fault the study reports in one line itself
                                (installed when this package is imported)

At the end (leaving `driving`):
 10. a full disk anywhere -> disk.StorageFull, one line naming the folder and its free space; a new study
     refused before anything ran leaves no folder; the Ray session record is forgotten; the lock released.

    with driving(storage, break_lock):            # 1, 2 and 10
        if resume:
            on_resume(spec, storage, force)       # 3
        session = init_ray(...)
        ray_started(storage, session)             # 4
        tuner = restore(storage, trainable, [SpaceGuard(storage), ...]) if resume else tune.Tuner(...)   # 5, 6

A new guard goes in a module of its own here and in this list (docs/extending.md, "A fault guard").
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ray import tune

from study.faults import quiet  # installs the log filters
from study.faults.disk import StorageFull, disk_full, storage_full_message
from study.faults.integrity import check_train_snapshots, check_tune_state
from study.faults.leftovers import forget_ray_session, record_ray_session, remove_orphan_checkpoints, stop_leftover_ray
from study.faults.lock import StudyLock
from study.faults.outbox import outbox_path, unreachable
from study.faults.space_guard import SpaceGuard
from study.spec import Spec, SpecError, StudyError
from study.storage import StudyStorage, check_unchanged

__all__ = [
    "SpaceGuard",
    "StorageFull",
    "before_start",
    "driving",
    "on_resume",
    "outbox_path",
    "quiet",
    "ray_started",
    "restore",
    "unreachable",
]


@contextmanager
def driving(storage: StudyStorage, break_lock: bool = False):
    """Hold the study's lock (1) and clean up what a killed driver left (2) before the body runs; on
    the way out, a full disk becomes StorageFull, and the lock is released (10)."""
    fresh = storage.local is not None and not storage.local.exists()
    lock = StudyLock(storage, break_lock)
    lock.acquire()  # before looking at the state: a second driver started a second later must not pass
    ours = False
    try:
        try:
            # What a killed driver of this study left (its local Ray's agents, unregistered checkpoints):
            # safe now that the lock says no driver of this study runs.
            before_start(storage)
            ours = True  # from here a Ray this driver starts is recorded; forgotten again at its end
            yield
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


def before_start(storage: StudyStorage) -> None:
    """2: stop the leftover Ray of a killed driver of this study, remove its unregistered checkpoints."""
    stop_leftover_ray(storage)
    remove_orphan_checkpoints(storage)


def on_resume(spec: Spec, storage: StudyStorage, force: bool) -> None:
    """3: before Ray starts on --resume: StudyError when the saved state cannot be resumed as it is."""
    check_unchanged(spec, storage, force)
    check_tune_state(storage)  # Tune would start over silently from a truncated state file
    check_train_snapshots(storage)  # and Train would fail a trial whose checkpoint record is truncated


def ray_started(storage: StudyStorage, session: str | None) -> None:
    """4: a Ray of our own (its session folder): if this driver is killed, the next start stops what is left."""
    if session:
        record_ray_session(storage, session)


def restore(storage: StudyStorage, trainable, callbacks: list) -> tune.Tuner:
    """5: Tune's saved experiment, unfinished trials resumed from their checkpoints, errored ones not."""
    tuner = tune.Tuner.restore(storage.tune, trainable=trainable, resume_unfinished=True, resume_errored=False)
    # Tune restores the callbacks pickled with the experiment; use this run's (tracking URI, clock).
    if getattr(tuner, "_local_tuner", None) is not None:
        tuner._local_tuner.get_run_config().callbacks = callbacks
    return tuner


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (or gone): keep it
