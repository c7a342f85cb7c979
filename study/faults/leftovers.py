"""What a killed driver leaves behind, cleaned up by the next `study.run` / `--resume` of its study
(issue 14, item 5): the processes of the local Ray it started, and checkpoint folders that no Train
run registered.

    record_ray_session(storage, session_dir)   # after starting a local Ray: <study>/ray_session.json
    stop_leftover_ray(storage)                 # on the next start (holding StudyLock): kill what is left
    remove_orphan_checkpoints(storage)         # Train run folders: drop checkpoint_* not in Train's snapshot
    forget_ray_session(storage)                # on a normal end

Measured on a 2-core machine (SIGKILL of the driver while a tiny trial trained): the Train worker,
controller and Tune trial processes were gone within 3 s (Ray's fate sharing: a driver's workers
die with it); what stayed, 30 s later and for good, were the local Ray's DashboardAgent and
RuntimeEnvAgent, plus checkpoint folders the worker had written ahead of the controller, which
never registered them. A worker checks that its driver still runs (its pid on the driver's node,
else the GCS's job record) before it writes a checkpoint (trainables.ray_adapter.driver_alive), so
none is written after the kill.

A Ray process belongs to the killed driver's Ray when it holds files open in that Ray's session
folder (`/tmp/ray/session_<time>_<pid>/`, unique to each `ray.init` that starts a Ray), or is one
of the processes recorded at start with the same start time. Only a Ray the driver started itself
is recorded: a cluster joined with --address (`ray start`, KubeRay, ...) is never touched, nor is a
Ray of another study (another session folder). A record written on another host is only reported.
Unregistered checkpoint folders are removed on any storage, object stores included.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pyarrow.fs

from study.storage import StudyStorage
from trainables.checkpoint import TrainRun
from trainables.procs import process_start

RAY_SESSION = "ray_session.json"  # in a local study folder, beside driver.lock


def session_processes(session_dir: str) -> dict[int, str]:
    """Live processes (not this one) holding a file open under session_dir, or naming it on their
    command line (an agent that has not opened its logs yet): pid -> start time."""
    prefix = session_dir.rstrip("/") + "/"
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            links = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in fds]
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone, or not ours to look at
        # an argument that is the folder or a path in it, alone or as --flag=value
        named = any(a.split("=", 1)[-1] == prefix[:-1] or a.split("=", 1)[-1].startswith(prefix) for a in args)
        if named or any(link.startswith(prefix) for link in links):
            start = process_start(int(entry))
            if start is not None:
                found[int(entry)] = start
    return found


def record_ray_session(storage: StudyStorage, session_dir: str) -> None:
    """Note the local Ray this driver started (its session folder and processes) in the study folder."""
    if storage.local is None:
        return
    storage.write(
        RAY_SESSION,
        json.dumps(
            {
                "host": socket.gethostname(),
                "driver_pid": os.getpid(),
                "driver_start": process_start(os.getpid()),
                "session_dir": session_dir,
                "pids": session_processes(session_dir),
            },
            indent=1,
        ),
    )


def forget_ray_session(storage: StudyStorage) -> None:
    if storage.local is not None:
        (storage.local / RAY_SESSION).unlink(missing_ok=True)


def stop_leftover_ray(storage: StudyStorage) -> list[str]:
    """Kill the processes left by the local Ray of a driver that is gone; returns what was killed
    (one 'pid name' each). Call while holding the study's lock."""
    if storage.local is None:
        return []
    text = storage.read(RAY_SESSION)
    if text is None:
        return []
    try:
        rec = json.loads(text)
        session = rec["session_dir"]
    except (ValueError, KeyError):
        forget_ray_session(storage)
        return []
    if rec.get("host") != socket.gethostname():
        print(
            f"note: {storage.local / RAY_SESSION}: the driver that ran this study last on {rec.get('host')} "
            f"(pid {rec.get('driver_pid')}) may have left Ray processes there; on that host run "
            f"fuser -k -KILL {session}/logs/* (or ray stop, if no other Ray of yours runs there)",
            flush=True,
        )
        forget_ray_session(storage)
        return []
    driver = int(rec.get("driver_pid") or 0)
    if driver == os.getpid() or (
        driver > 0 and process_start(driver) not in (None, "?") and process_start(driver) == rec.get("driver_start")
    ):
        return []  # that driver still runs (this process, or the lock was broken): its Ray is not left over
    victims = session_processes(session)
    for pid, start in (rec.get("pids") or {}).items():  # recorded at start; a reused pid has another start time
        if process_start(int(pid)) == start:
            victims[int(pid)] = start
    killed = kill_processes(victims)
    if killed:
        print(
            f"note: stopped {len(killed)} Ray process(es) left by the killed driver (pid {driver}, Ray session "
            f"{session}): {', '.join(killed)}",
            flush=True,
        )
    forget_ray_session(storage)
    return killed


def kill_processes(victims: dict[int, str]) -> list[str]:
    """SIGKILL each pid that still has the start time it was found with; -> 'pid name' of each killed."""
    killed = []
    for pid, start in sorted(victims.items()):
        if process_start(pid) != start:
            continue  # ended meanwhile, or the pid was reused
        name = _name(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        killed.append(f"{pid} {name}")
    return killed


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")[:60]
    except OSError:
        return "?"


def remove_orphan_checkpoints(storage: StudyStorage) -> list[str]:
    """Delete checkpoint_* folders that their Train run never registered (a worker writes a checkpoint
    before its controller registers it; a killed driver leaves such folders), on any storage (a local
    or NFS folder, s3://, gs://: through pyarrow). A run whose snapshot is unreadable is left alone.
    Returns the removed folders, relative to the study ("train/train_<trial>/checkpoint_..."). Call
    while holding the study's lock."""
    fs, base = storage.fs, f"{storage.path}/train"
    if fs.get_file_info(base).type != pyarrow.fs.FileType.Directory:
        return []
    removed = []
    for run in fs.get_file_info(pyarrow.fs.FileSelector(base)):
        if run.type != pyarrow.fs.FileType.Directory:
            continue
        # a snapshot moved aside (study.faults.integrity) or unreadable: its folders are left alone
        for folder in TrainRun(run.path, fs=fs).unregistered():
            try:
                fs.delete_dir(folder.path)
            except OSError:
                continue  # gone meanwhile, or not ours to delete: the next start tries again
            removed.append(f"train/{run.base_name}/{folder.base_name}")
    if removed:
        print(
            f"note: removed {len(removed)} checkpoint folder(s) that no Train run registered (written as the "
            f"last driver stopped or was killed): {', '.join(removed[:5])}" + (" ..." if len(removed) > 5 else ""),
            flush=True,
        )
    return removed
