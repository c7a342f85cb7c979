"""Where a study keeps its state, and what a resume checks: `<study.storage>/<study.name>/`
holds `study.json` (the resolved spec it started with), `tune/` (Tune's experiment state) and
`train/` (each trial's Train run and checkpoints).

    storage = StudyStorage(spec)
    storage.write(SNAPSHOT, json.dumps(...))
    check_unchanged(spec, storage, force=False)   # on --resume: StudyError if the spec was edited

study.storage is a local folder (relative to the working directory) or a URI that pyarrow
understands (file://, s3://, gs://, ...); on a multi-node cluster it must be shared by all nodes.
An s3:// store takes its endpoint and credentials from the usual AWS variables of each process
(AWS_ENDPOINT_URL for a server that is not AWS, AWS_ACCESS_KEY_ID, ...), never from the spec.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from study.spec import Spec, StudyError
from trainables.checkpoint import filesystem
from trainables.config import flatten
from trainables.procs import UNKNOWN, process_start

SNAPSHOT = "study.json"  # the resolved spec a study started with, beside its Tune state


class StudyStorage:
    """The study's folder or URI, read and written through pyarrow (local, file://, s3://, ...)."""

    def __init__(self, spec: Spec):
        self.uri = spec.location
        self.local = None if "://" in self.uri else Path(self.uri)
        self.fs, self.path = filesystem(self.uri)

    @property
    def tune(self) -> str:
        return f"{self.uri}/tune"

    @property
    def train(self) -> str:
        return f"{self.uri}/train"

    def read(self, name: str) -> str | None:
        try:
            with self.fs.open_input_stream(f"{self.path}/{name}") as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    def write(self, name: str, text: str) -> None:
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{name}") as f:
            f.write(text.encode())


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
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
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
                print(f"note: took over the study's lock from {_describe(holder)}: "
                      f"{why or 'broken with --break-lock'}", flush=True)
                self._remove()
                continue
            raise StudyError(
                f"study {self.storage.uri.rsplit('/', 1)[-1]!r} is being run by another driver: {_describe(holder)} "
                f"(lock {self.storage.uri}/{LOCK}); wait for it to end, or, if that driver is gone for good "
                f"(its machine was lost), add --break-lock")
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


def check_unchanged(spec: Spec, storage: StudyStorage, force: bool) -> None:
    """Refuse to resume with an edited spec (or, with force, say what does and does not apply)."""
    saved = storage.read(SNAPSHOT)
    if saved is None:
        print(f"warning: {storage.uri} has no {SNAPSHOT}; cannot check the spec against the one it started with")
        return
    old = json.loads(saved)["resolved"]
    old.get("study", {}).setdefault("repeats", 1)  # a study started before study.repeats existed
    new = spec.resolved()
    changes = spec_diff(old, new)
    if not changes:
        return
    lines = "\n".join(f"    {c}" for c in changes)
    if not force:
        raise StudyError(
            f"the spec of study {spec.study.name!r} changed since it started ({storage.uri}/{SNAPSHOT}):\n{lines}\n"
            f"  resume with the original spec, or add --force to resume anyway"
        )
    kept = [c for c in changes if c.split(".")[0] in ("study", "space")]
    print(f"warning: resuming with an edited spec (--force):\n{lines}", flush=True)
    if kept:
        print("  study: and space: changes do not apply: the saved search keeps its objectives, sampler and "
              "space; base: and resources: changes apply to the trials still to run", flush=True)
    # What the study runs with from now on: the new base and resources, the original search.
    storage.write(SNAPSHOT, json.dumps({"source": spec.source, "resolved": {**new, "study": old["study"],
                                                                              "space": old["space"]}}, indent=1))


def spec_diff(old: dict, new: dict) -> list[str]:
    """What changed between two `Spec.resolved()` dicts, one `path: old -> new` line per field."""

    def lines(spec: dict) -> dict:
        # a space entry is one line ("loguniform: [0.0001, 0.01]"), not one per distribution key
        space = {f"space.{path}": " ".join(f"{k}: {v}" for k, v in dist.items())
                 for path, dist in spec.get("space", {}).items()}
        # an empty mapping (resources.custom) adds no line
        return {**flatten({k: v for k, v in spec.items() if k != "space"}), **space}

    a, b = lines(old), lines(new)
    out = []
    for key in dict.fromkeys([*a, *b]):
        if a.get(key, "(absent)") != b.get(key, "(absent)"):
            out.append(f"{key}: {a.get(key, '(absent)')} -> {b.get(key, '(absent)')}")
    return out
