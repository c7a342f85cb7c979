"""One driver per study (study.faults.lock.StudyLock), on a real folder with real processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from study.spec import StudyError, load_spec
from study.faults.lock import LOCK, StudyLock
from study.storage import StudyStorage


@pytest.fixture
def storage(tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        textwrap.dedent(f"""\
        study: {{name: locked, storage: {tmp_path / "store"}}}
        """)
    )
    return StudyStorage(load_spec(spec_file))


def _hold(storage, host: str, pid: int, pid_start=None) -> None:
    storage.local.mkdir(parents=True, exist_ok=True)
    (storage.local / LOCK).write_text(
        json.dumps({"host": host, "pid": pid, "pid_start": pid_start, "started": "2026-11-27 10:00:00 UTC"})
    )


def test_the_lock_is_taken_and_given_back(storage):
    with StudyLock(storage) as lock:
        held = json.loads((storage.local / LOCK).read_text())
        assert held["pid"] == lock.mine["pid"] and held["host"] == socket.gethostname()
    assert not (storage.local / LOCK).exists()


def test_a_second_driver_is_refused_and_told_who_holds_it(storage):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _hold(storage, socket.gethostname(), holder.pid)
        with pytest.raises(StudyError) as e:
            StudyLock(storage).acquire()
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "started 2026-11-27" in msg
        assert "--break-lock" in msg
        assert json.loads((storage.local / LOCK).read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_driver_on_this_host_is_taken_over(storage, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _hold(storage, socket.gethostname(), dead.pid)
    with StudyLock(storage) as lock:
        assert json.loads((storage.local / LOCK).read_text())["pid"] == lock.mine["pid"]
    assert f"pid {dead.pid} is not running on this host" in capsys.readouterr().out


def test_a_reused_pid_does_not_keep_a_dead_drivers_lock(storage):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # the pid is alive, but it started at another time than the recorded driver
        _hold(storage, socket.gethostname(), alive.pid, pid_start="1")
        with StudyLock(storage):
            pass
    finally:
        alive.kill()
        alive.wait()


def test_another_hosts_lock_needs_break_lock(storage):
    _hold(storage, "node-7.cluster", 4242)
    with pytest.raises(StudyError, match="host node-7.cluster, pid 4242"):
        StudyLock(storage).acquire()
    with StudyLock(storage, break_lock=True) as lock:
        assert json.loads((storage.local / LOCK).read_text())["pid"] == lock.mine["pid"]


def test_an_unreadable_lock_is_taken_over(storage):
    storage.local.mkdir(parents=True)
    (storage.local / LOCK).write_text("{trunc")
    with StudyLock(storage):
        pass
