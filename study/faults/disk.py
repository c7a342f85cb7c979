"""What a full disk looks like, and the one line that says so.

    disk_full(exc)                         # is this exception a full disk / quota / I/O error? ('' if not)
    raise StorageFull(storage_full_message(folder, what))   # names the folder and its free space

run_study (study.faults.driving) turns any exception that disk_full recognises into StorageFull;
the free-space guard (study.faults.space_guard) stops the study before that happens.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from study.spec import StudyError

_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)
DISK_MESSAGES = ("database or disk is full", "no space left on device", "disk quota exceeded", "disk i/o error")


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
    return (
        f"the study storage {path} is out of space{f' ({what})' if what else ''}: {mib(free)} free of "
        f"{mib(total)}; the state saved so far is kept: free space there, then continue with --resume"
    )


def disk_full(exc: BaseException | None) -> str:
    """'' unless exc (or an exception it wraps) is a full disk, a quota or an I/O error; else its text."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            return f"{os.strerror(exc.errno)}{f': {exc.filename}' if exc.filename else ''}"
        text = str(exc).lower()
        for m in DISK_MESSAGES:
            if m in text:
                return m
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return ""
