"""One driver per study: `<study>/driver.lock`, taken before a study starts or resumes
(study.faults.driving) and released at its end.

    with StudyLock(storage, break_lock=False):
        ...  # run the study
"""

from __future__ import annotations

import json
import os
import socket
import time

from study.spec import StudyError
from study.storage import StudyStorage
from trainables.procs import UNKNOWN, process_start

LOCK = "driver.lock"


class StudyLock:
    """One driver per study: `<study>/driver.lock` names the driver that runs it (host, pid, start).

    A second `study.run` of the same study (start or --resume) is refused while the holder lives.
    A lock left by a driver that is gone is taken over: on the same host when its pid is dead (or
    reused by another program), from another host only with `--break-lock`. A local folder or NFS
    (v3+) creates the lock atomically (O_EXCL); an object store has no such write, so there two
    drivers started within the same second are not kept apart (docs/faults.md).

        with StudyLock(storage, break_lock=False):
            ...  # run the study
    """

    def __init__(self, storage: StudyStorage, break_lock: bool = False):
        self.storage, self.break_lock = storage, break_lock
        self.mine = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        self.held = False

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(3):  # a stale lock removed, then created again: at most a couple of rounds
            if self._create():
                self.held = True
                return
            holder = self.holder()
            if holder is None:
                continue  # released in between
            why = self._stale(holder)
            if why or self.break_lock:
                print(
                    f"note: took over the study's lock from {_describe(holder)}: {why or 'broken with --break-lock'}",
                    flush=True,
                )
                self._remove()
                continue
            raise StudyError(
                f"study {self.storage.uri.rsplit('/', 1)[-1]!r} is being run by another driver: {_describe(holder)} "
                f"(lock {self.storage.uri}/{LOCK}); wait for it to end, or, if that driver is gone for good "
                f"(its machine was lost), add --break-lock"
            )
        raise StudyError(f"could not take the study's lock {self.storage.uri}/{LOCK}; try again")

    def release(self) -> None:
        if self.held and (self.holder() or {}).get("pid") == self.mine["pid"]:
            self._remove()
        self.held = False

    def holder(self) -> dict | None:
        text = self.storage.read(LOCK)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {"host": "?", "pid": -1, "started": "?", "unreadable": True}

    def _stale(self, holder: dict) -> str:
        """Why the holder is certainly gone ('' if it may be alive)."""
        if holder.get("unreadable"):
            return "the lock file was unreadable (written when its driver was killed)"
        if holder.get("host") != self.mine["host"]:
            return ""  # another machine: only it can tell
        pid = int(holder.get("pid", -1))
        if pid == self.mine["pid"]:
            return "it is this process"
        if process_start(pid) is None:  # a zombie counts as alive: its pid is not free yet
            return f"pid {pid} is not running on this host"
        now, then = process_start(pid), holder.get("pid_start")
        if now != UNKNOWN and then not in (None, UNKNOWN) and now != then:
            return f"pid {pid} is now another program"
        return ""

    def _create(self) -> bool:
        text = json.dumps(self.mine)
        if self.storage.local is not None:
            self.storage.local.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.storage.local / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        if self.storage.read(LOCK) is not None:  # object store: check, then write (not atomic; see above)
            return False
        self.storage.write(LOCK, text)
        return True

    def _remove(self) -> None:
        try:
            self.storage.fs.delete_file(f"{self.storage.path}/{LOCK}")
        except FileNotFoundError:
            pass


def _describe(holder: dict) -> str:
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"
