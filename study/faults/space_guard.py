"""The free-space guard: a Tune callback, first of the study's, that stops the study while its
storage still has room to save the state, and keeps a copy of the last readable Tune state.

    guard = SpaceGuard(storage)            # a Tune callback: stops the study (as Ctrl-C would) while
    ...                                    # there is still room to save its state; keeps a copy of it
    if guard.short: raise guard.error()    # StorageFull: one line naming the folder and the free space

The study stops below `LANDMARK_STUDY_MIN_FREE_MB` (default 64 MiB) free, or three times the
trial's newest checkpoint if that is more; why it must stop before the disk is full is in
study.faults.integrity.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from ray.tune import Callback

from study.faults.disk import StorageFull, free_space, mib, storage_full_message
from study.faults.integrity import COPY, STATE_FILES, newest_state, state_problem
from study.faults.quiet import quiet_tunes_stop
from study.storage import StudyStorage
from trainables.checkpoint import TrainRun

MIN_FREE_MB = 64  # below this (or 3 newest checkpoints' worth) the study stops; LANDMARK_STUDY_MIN_FREE_MB overrides
COPY_EVERY_S = 10.0  # at most this often (a 100-trial state is a few MB)
LOOK_EVERY_S = 2.0  # free space is also looked at this often between results


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
            print(
                f"stopping: {mib(free)} free in {self.storage.local} (less than {mib(reserve)}); saving the "
                f"study's state while there is room",
                flush=True,
            )
            # Tune's own words for this stop speak of Ctrl-C and Tuner.restore: the line above and the
            # error line at the end say what happened and what to run instead.
            quiet_tunes_stop()
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
                newest = newest_state(tune_dir, pattern)
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
