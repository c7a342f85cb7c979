"""What keeps a study's state whole on a full disk, and what a resume checks before Tune reads it.

    guard = SpaceGuard(storage)            # a Tune callback: stops the study (as Ctrl-C would) while
    ...                                    # there is still room to save its state; keeps a copy of it
    if guard.short: raise guard.error()    # StorageFull: one line naming the folder and the free space
    check_tune_state(storage)              # before Tuner.restore: StudyError if the state is unreadable
    check_train_snapshots(storage)         # and Train's per-run records: a truncated one is moved aside
    disk_full(exc)                         # is this exception a full disk / quota / I/O error?

Why: Tune writes its experiment state in place (no temporary name), in a background sync after
each save; on a full disk that sync fails with only a log line and leaves the file truncated, and
a later `Tuner.restore` of a truncated file logs "Failed to restore the run state" and starts the
study over, re-running finished trials under new ids. So the study stops itself before the disk is
full (`LANDMARK_STUDY_MIN_FREE_MB`, default 64 MiB, or three times the newest checkpoint if that is
more), keeps a copy of the last readable state (`tune/.state-copy/`), and a resume refuses a state
it cannot read unless that copy can stand in for it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from ray.tune import Callback

from study.spec import StudyError
from study.storage import StudyStorage
from trainables.checkpoint import BROKEN, TRAIN_SNAPSHOT, TrainRun

MIN_FREE_MB = 64  # below this (or 3 newest checkpoints' worth) the study stops; LANDMARK_STUDY_MIN_FREE_MB overrides
COPY = ".state-copy"  # in tune/: the last readable experiment state, searcher and callback states
COPY_EVERY_S = 10.0  # at most this often (a 100-trial state is a few MB)
LOOK_EVERY_S = 2.0  # free space is also looked at this often between results
# What a restore reads. search_gen_state-*.json is a pickle despite its name (Tune's SearchGenerator);
# a truncated one made Tune's restore fail and start the study over.
STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "callback-states-*.pkl")
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)
_DISK_MESSAGES = ("database or disk is full", "no space left on device", "disk quota exceeded", "disk i/o error")


class StorageFull(StudyError):
    """The study's storage ran out of space (or failed to write); the state saved so far is kept."""


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def free_space(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the filesystem holding `path` (its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


def storage_full_message(path: Path, what: str = "") -> str:
    free, total = free_space(path)
    return (f"the study storage {path} is out of space{f' ({what})' if what else ''}: {mib(free)} free of "
            f"{mib(total)}; the state saved so far is kept: free space there, then continue with --resume")


def disk_full(exc: BaseException | None) -> str:
    """'' unless exc (or an exception it wraps) is a full disk, a quota or an I/O error; else its text."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            return f"{os.strerror(exc.errno)}{f': {exc.filename}' if exc.filename else ''}"
        text = str(exc).lower()
        for m in _DISK_MESSAGES:
            if m in text:
                return m
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return ""


def _newest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def state_problem(path: Path) -> str:
    """'' if a Tune state file reads back whole, else what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"unreadable ({e})"
    if path.suffix == ".json" and not data.startswith(b"\x80"):  # a pickle starts with its PROTO opcode
        try:
            json.loads(data)
        except ValueError as e:
            return f"truncated or corrupt ({len(data)} bytes; {e})"
    else:  # a pickle always ends with its STOP opcode; a truncated one does not (then try it whole)
        if not data.endswith(b"."):
            return f"truncated ({len(data)} bytes, no end mark)"
        try:
            import cloudpickle

            cloudpickle.loads(data)
        except Exception as e:  # noqa: BLE001 - any unpickling error means Tune could not read it either
            return f"corrupt ({len(data)} bytes; {type(e).__name__}: {e})"
    return ""


def check_tune_state(storage: StudyStorage) -> None:
    """Before `Tuner.restore`: the newest state files must read back, since Tune would otherwise
    start the study over silently. A broken one is replaced by the copy SpaceGuard kept, if that
    reads; otherwise StudyError says which file and why. Object-store studies are not checked."""
    if storage.local is None:
        return
    tune_dir = storage.local / "tune"
    for pattern in STATE_FILES:
        newest = _newest(tune_dir, pattern)
        if newest is None:
            continue
        problem = state_problem(newest)
        if not problem:
            continue
        copy = tune_dir / COPY / newest.name
        if copy.exists() and not state_problem(copy):
            shutil.copyfile(copy, newest)
            print(f"note: {newest} was {problem}; replaced by the copy of {time.ctime(copy.stat().st_mtime)} "
                  f"(trials that ended after it continue from their checkpoints, under the same ids)", flush=True)
            continue
        older = [p.name for p in sorted(tune_dir.glob(pattern))[:-1] if not state_problem(p)]
        hint = (f"; moving it aside (mv {newest} {newest}.broken) resumes from the older {older[-1]}, and "
                f"trials that ended after that run again") if older else ""
        raise StudyError(f"--resume: Tune's state {newest} is {problem}, and no readable copy of it is kept: "
                         f"Tune would start the study over{hint}; or delete {storage.uri} to start over")


def check_train_snapshots(storage: StudyStorage) -> None:
    """Before a resume: Train rewrites each run's checkpoint_manager_snapshot.json in place too, and
    a write cut off by a full disk leaves it truncated; Train then refuses to start that run again
    and the trial fails. A snapshot that does not read is moved aside (`.broken`), and the trial
    continues from the newest complete checkpoint folder of its run (study.trial.fallback_checkpoint),
    else from epoch 1, under its own id; a `note:` names the file."""
    if storage.local is None:
        return
    for snapshot in sorted((storage.local / "train").glob(f"train_*/{TRAIN_SNAPSHOT}")):
        problem = state_problem(snapshot)
        if not problem:
            continue
        snapshot.replace(snapshot.with_name(snapshot.name + BROKEN))
        print(f"note: {snapshot} was {problem} (cut off by a full disk?); kept as {snapshot.name}{BROKEN}: "
              f"its trial continues from the newest complete checkpoint in {snapshot.parent.name}/", flush=True)


class _QuietFullDisk(logging.Filter):
    """Tune's traceback for a state sync that failed on a full disk: the guard stops the study at its
    next look and says so in one line; a truncated state file is what check_tune_state is for."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage().startswith(("Saving experiment state to storage",
                                                    "Experiment state snapshotting failed")) and disk_full(error))


for _name in ("ray.tune.execution.experiment_state", "ray.tune.tune"):
    logging.getLogger(_name).addFilter(_QuietFullDisk())


class _QuietUnhandledFullDisk(logging.Filter):
    """Ray's `Unhandled error` traceback of a trial that failed on the full disk after the study
    stopped looking at it: the study's one error line says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Unhandled error") and any(m in message.lower() for m in _DISK_MESSAGES))


logging.getLogger("ray._private.worker").addFilter(_QuietUnhandledFullDisk())


class _QuietStop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Stop signal received", "Experiment has been interrupted"))


class SpaceGuard(Callback):
    """Stops the study while its storage still has room to save the state, and keeps a copy of the
    last readable Tune state. Local and NFS storage only (an object store does not fill up).

    The stop is Tune's own graceful one (SIGUSR1, as Ctrl-C): running trials stay unfinished in
    the saved state and `--resume` continues them from their checkpoints, under the same ids.
    """

    def __init__(self, storage: StudyStorage):
        self.storage = storage
        self.min_free = int(float(os.environ.get("LANDMARK_STUDY_MIN_FREE_MB", MIN_FREE_MB)) * 2**20)
        self.short: tuple[int, int] | None = None  # (free, total) when it stopped the study
        self._copied = 0.0
        self._looked = 0.0

    def reserve(self, trial_id: str | None) -> int:
        """Bytes that must stay free: the floor, or three of the trial's newest checkpoints."""
        if trial_id is None or self.storage.local is None:
            return self.min_free
        folders = TrainRun(f"{self.storage.path}/train/train_{trial_id}", fs=self.storage.fs).folders()
        size = sum(f.stat().st_size for f in Path(folders[-1].path).iterdir() if f.is_file()) if folders else 0
        return max(self.min_free, 3 * size)

    def check(self, trial_id: str | None = None) -> None:
        if self.storage.local is None or self.short is not None:
            return
        try:
            free, total = free_space(self.storage.local)
            reserve = self.reserve(trial_id)
        except OSError:
            return  # a folder removed meanwhile: the next result checks again
        if free < reserve:
            self.short = (free, total)
            print(f"stopping: {mib(free)} free in {self.storage.local} (less than {mib(reserve)}); saving the "
                  f"study's state while there is room", flush=True)
            # Tune's own words for this stop speak of Ctrl-C and Tuner.restore: the line above and the
            # error line at the end say what happened and what to run instead.
            logging.getLogger("ray.tune.tune").addFilter(_QuietStop())
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop: save the state, keep trials unfinished
            return
        if time.monotonic() - self._copied >= COPY_EVERY_S:
            self._copied = time.monotonic()
            self.copy_state()

    def copy_state(self) -> None:
        """Copy the newest readable state files to tune/.state-copy/ (temporary name, then rename)."""
        tune_dir = self.storage.local / "tune"
        try:
            (tune_dir / COPY).mkdir(parents=True, exist_ok=True)
            for pattern in STATE_FILES:
                newest = _newest(tune_dir, pattern)
                if newest is None:
                    continue
                # a pickle is only checked for its end mark here: unpickling a searcher each time costs
                data = newest.read_bytes()
                whole = data.endswith(b".") if data.startswith(b"\x80") else not state_problem(newest)
                if not whole:
                    continue  # being written right now (or broken): keep the older copy
                tmp = tune_dir / COPY / f".{newest.name}.tmp"
                shutil.copyfile(newest, tmp)
                tmp.replace(tune_dir / COPY / newest.name)
        except OSError:
            pass  # no room for the copy: the guard stops the study on the next result

    def error(self) -> StorageFull:
        return StorageFull(storage_full_message(self.storage.local))

    def on_step_end(self, iteration, trials, **info):
        # Between results too: a disk filled by someone else is seen within seconds, before a worker's
        # checkpoint upload fails (Train retries those several times before Tune hears of it).
        if time.monotonic() - self._looked >= LOOK_EVERY_S:
            self._looked = time.monotonic()
            self.check()

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.check(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.check(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.check(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.check(trial.trial_id)
