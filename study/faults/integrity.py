"""What a resume checks before Tune reads the study's state (study.faults.on_resume).

    check_tune_state(storage)              # before Tuner.restore: StudyError if the state is unreadable
    check_train_snapshots(storage)         # and Train's per-run records: a truncated one is moved aside

Why: Tune writes its experiment state in place (no temporary name), in a background sync after
each save; on a full disk that sync fails with only a log line and leaves the file truncated, and
a later `Tuner.restore` of a truncated file logs "Failed to restore the run state" and starts the
study over, re-running finished trials under new ids. So the study stops itself before the disk is
full (study.faults.space_guard), keeps a copy of the last readable state (`tune/.state-copy/`), and
a resume refuses a state it cannot read unless that copy can stand in for it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from study.spec import StudyError
from study.storage import StudyStorage
from trainables.checkpoint import BROKEN, TRAIN_SNAPSHOT

COPY = ".state-copy"  # in tune/: the last readable experiment state, searcher and callback states
# What a restore reads. search_gen_state-*.json is a pickle despite its name (Tune's SearchGenerator);
# a truncated one made Tune's restore fail and start the study over.
STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "callback-states-*.pkl")


def newest_state(folder: Path, pattern: str) -> Path | None:
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
        newest = newest_state(tune_dir, pattern)
        if newest is None:
            continue
        problem = state_problem(newest)
        if not problem:
            continue
        copy = tune_dir / COPY / newest.name
        if copy.exists() and not state_problem(copy):
            shutil.copyfile(copy, newest)
            print(
                f"note: {newest} was {problem}; replaced by the copy of {time.ctime(copy.stat().st_mtime)} "
                f"(trials that ended after it continue from their checkpoints, under the same ids)",
                flush=True,
            )
            continue
        older = [p.name for p in sorted(tune_dir.glob(pattern))[:-1] if not state_problem(p)]
        hint = (
            (
                f"; moving it aside (mv {newest} {newest}.broken) resumes from the older {older[-1]}, and "
                f"trials that ended after that run again"
            )
            if older
            else ""
        )
        raise StudyError(
            f"--resume: Tune's state {newest} is {problem}, and no readable copy of it is kept: "
            f"Tune would start the study over{hint}; or delete {storage.uri} to start over"
        )


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
        print(
            f"note: {snapshot} was {problem} (cut off by a full disk?); kept as {snapshot.name}{BROKEN}: "
            f"its trial continues from the newest complete checkpoint in {snapshot.parent.name}/",
            flush=True,
        )
