"""A process by pid and start time, from /proc: what tells a live process from a gone or reused pid.

    start = process_start(pid)                      # "123456" (clock ticks since boot), None: no such process
    process_start(pid, zombie_alive=False)          # a zombie (killed, not yet reaped) counts as gone
    stat_fields(pid)                                # ["S", ppid, pgrp, session, ...] (proc(5), from field 3)

The study's lock counts a zombie as alive (its driver has not been reaped: the pid is not free yet);
a Train worker following its driver counts a zombie as gone (a SIGKILLed driver is a zombie until
its parent reaps it). Plain Python, no Ray: trainables.ray_adapter, study/ and dashboards/ use it.
"""

from __future__ import annotations

import os
from pathlib import Path

UNKNOWN = "?"  # alive, start time unknown (no /proc: not Linux)


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and ")"), so
    that [0] is the state, [1] the parent pid, [2] the process group, [19] the start time; None if
    there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_start(pid: int, zombie_alive: bool = True) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart); None when
    there is no such process, or, with zombie_alive False, when it is a zombie; UNKNOWN when it
    runs but this system has no /proc to say when it started."""
    if pid <= 0:
        return None  # os.kill would signal a process group
    fields = stat_fields(pid)
    if fields is not None and len(fields) > 19:
        return None if not zombie_alive and fields[0] in "ZXx" else fields[19]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return UNKNOWN
