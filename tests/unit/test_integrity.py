"""State integrity: complete checkpoints only, Tune's state read back before a resume, the free-space
guard and what counts as a full disk (issue 14, item 2). No Ray is started here."""

from __future__ import annotations

import errno
import json
import signal
import sqlite3
import textwrap

import pytest

from study.faults.disk import disk_full
from study.faults.integrity import COPY, check_train_snapshots, check_tune_state, state_problem
from study.faults.space_guard import SpaceGuard
from study.faults.leftovers import remove_orphan_checkpoints
from study.trial import fallback_checkpoint, train_run_name
from study.spec import StudyError, load_spec
from study.storage import StudyStorage
from trainables.checkpoint import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    TRAIN_SNAPSHOT,
    IncompleteCheckpoint,
    check_complete,
    is_complete,
    report_with_checkpoint,
)
from trainables.config import TrialConfig
from trainables.trainer import fit


# --- checkpoints -----------------------------------------------------------------------------------


def _written(tmp_path, recorder):
    """A checkpoint folder as report_with_checkpoint writes it (copied out by the Recorder)."""
    rec = recorder()
    report_with_checkpoint(
        rec, {"epoch": 3, "val/mre_mm": 1.5}, rank=0, state={"w": list(range(1000))}, tables={}, preview=None
    )
    return rec.checkpoints[0]


def test_a_written_checkpoint_lists_every_file_with_its_size(tmp_path, recorder):
    folder = _written(tmp_path, recorder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert sorted(manifest) == [CHECKPOINT_FILE, HISTORY_FILE, METRICS_FILE]
    assert manifest[CHECKPOINT_FILE] == (folder / CHECKPOINT_FILE).stat().st_size > 0
    assert not list(folder.glob(".*.tmp"))
    check_complete(folder)
    assert is_complete(folder)


def test_a_truncated_or_unfinished_checkpoint_is_never_complete(tmp_path, recorder):
    folder = _written(tmp_path, recorder)
    full = (folder / CHECKPOINT_FILE).stat().st_size
    with open(folder / CHECKPOINT_FILE, "r+b") as f:  # the copy was cut off half way
        f.truncate(full // 2)
    with pytest.raises(IncompleteCheckpoint, match=rf"checkpoint.pt: {full // 2} bytes, the manifest says {full}"):
        check_complete(folder)
    (folder / MANIFEST_FILE).unlink()  # killed before the manifest (written last) existed
    with pytest.raises(IncompleteCheckpoint, match="no manifest.json"):
        check_complete(folder)
    assert not is_complete(folder)
    (folder / HISTORY_FILE).unlink()  # looks like a folder from before the manifests: checkpoint.pt decides
    with pytest.raises(IncompleteCheckpoint, match="checkpoint.pt does not load"):
        check_complete(folder)


def test_a_whole_checkpoint_from_before_the_manifests_is_complete(tmp_path, recorder):
    folder = _written(tmp_path, recorder)
    (folder / MANIFEST_FILE).unlink()
    (folder / HISTORY_FILE).unlink()  # what report_with_checkpoint wrote before manifests existed
    check_complete(folder)
    assert is_complete(folder)
    (folder / METRICS_FILE).write_text('{"epoch": 3, "val/')  # its copy was cut off
    with pytest.raises(IncompleteCheckpoint, match="metrics.json is cut short"):
        check_complete(folder)
    (folder / METRICS_FILE).unlink()  # killed between checkpoint.pt (whole) and metrics.json: the weights are whole
    assert is_complete(folder)
    (folder / CHECKPOINT_FILE).unlink()
    with pytest.raises(IncompleteCheckpoint, match="no checkpoint.pt"):
        check_complete(folder)


def test_fit_refuses_an_incomplete_checkpoint_instead_of_starting_over(tiny_config, recorder):
    cfg = TrialConfig.from_dict(tiny_config)
    first = recorder("first")
    fit(cfg, first)
    folder = first.checkpoints[-1]
    (folder / MANIFEST_FILE).unlink()  # killed after history.json, before the manifest
    resumed = recorder("resumed")
    with pytest.raises(IncompleteCheckpoint, match=str(folder)):
        fit(cfg, resumed, resume_from=folder)
    assert resumed.metrics == []  # not one epoch trained from scratch
    (folder / HISTORY_FILE).unlink()  # a folder from before the manifests: its checkpoint.pt loads, so it resumes
    longer = recorder("longer")
    fit(
        TrialConfig.from_dict({**tiny_config, "train": {**tiny_config["train"], "epochs": 3}}),
        longer,
        resume_from=folder,
    )
    assert [m["epoch"] for m in longer.metrics] == [3]


# --- Tune's state before a resume ----------------------------------------------------------------


def _storage(tmp_path) -> StudyStorage:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(f"study: {{name: s1, storage: '{tmp_path / 'store'}'}}\n"))
    storage = StudyStorage(load_spec(path))
    (storage.local / "tune").mkdir(parents=True)
    return storage


STATE = json.dumps({"trial_data": [["{}", "{}"]] * 20, "runner_data": {}, "stats": {}})


def test_a_truncated_experiment_state_is_refused_with_the_file_and_why(tmp_path):
    storage = _storage(tmp_path)
    tune = storage.local / "tune"
    (tune / "experiment_state-2026-11-27_10-00-00.json").write_text(STATE)
    check_tune_state(storage)  # readable: nothing to say
    broken = tune / "experiment_state-2026-11-27_11-00-00.json"
    broken.write_text(STATE[: len(STATE) // 2])  # the sync to a full disk stopped half way
    with pytest.raises(StudyError) as e:
        check_tune_state(storage)
    msg = str(e.value)
    assert f"Tune's state {broken} is truncated or corrupt ({len(STATE) // 2} bytes" in msg
    assert "Tune would start the study over" in msg
    # an older readable state is offered, with what it costs
    assert f"mv {broken} {broken}.broken" in msg and "experiment_state-2026-11-27_10-00-00.json" in msg


def test_the_kept_copy_stands_in_for_a_truncated_state(tmp_path, capsys):
    storage = _storage(tmp_path)
    tune = storage.local / "tune"
    (tune / COPY).mkdir()
    (tune / COPY / "experiment_state-2026-11-27_11-00-00.json").write_text(STATE)
    broken = tune / "experiment_state-2026-11-27_11-00-00.json"
    broken.write_text("")  # opened for writing, then the disk was full
    check_tune_state(storage)
    assert broken.read_text() == STATE
    assert f"note: {broken} was truncated or corrupt (0 bytes" in capsys.readouterr().out


def test_a_truncated_train_record_is_moved_aside_and_its_trial_continues_from_its_newest_complete_checkpoint(
    tmp_path, recorder, capsys
):
    # Seen on a tmpfs filled at once: Train's checkpoint_manager_snapshot.json cut off at 4096 bytes.
    storage = _storage(tmp_path)
    run = storage.local / "train" / train_run_name("t1")
    run.mkdir(parents=True)
    snapshot = run / TRAIN_SNAPSHOT
    snapshot.write_text('{"ray_version": "2.60.0", "checkpoint_results": [{"version": 0, "checkpoint_dir_')
    for epoch in (1, 2, 3):
        rec = recorder(f"e{epoch}")
        report_with_checkpoint(rec, {"epoch": epoch}, rank=0, state={"w": [epoch]}, tables={}, preview=None)
        rec.checkpoints[0].rename(run / f"checkpoint_2026-11-27_22-47-3{epoch}.000000")
    (run / "checkpoint_2026-11-27_22-47-33.000000" / MANIFEST_FILE).unlink()  # epoch 3: its writing was cut off
    assert fallback_checkpoint(str(storage.local / "train"), train_run_name("t1")) is None  # Train's record decides

    check_train_snapshots(storage)
    assert not snapshot.exists() and (run / f"{TRAIN_SNAPSHOT}.broken").exists()
    assert f"note: {snapshot} was truncated or corrupt" in capsys.readouterr().out
    assert fallback_checkpoint(str(storage.local / "train"), train_run_name("t1")) == str(
        run / "checkpoint_2026-11-27_22-47-32.000000"
    )
    # a later start leaves those folders alone (no snapshot, but the one moved aside)
    assert remove_orphan_checkpoints(storage) == []
    check_train_snapshots(storage)  # nothing more to say
    assert capsys.readouterr().out == ""


def test_a_truncated_searcher_pickle_is_refused(tmp_path):
    import pickle

    storage = _storage(tmp_path)
    tune = storage.local / "tune"
    (tune / "experiment_state-2026-11-27_11-00-00.json").write_text(STATE)
    data = pickle.dumps({"study": list(range(500))})
    good = tune / "searcher-state-2026-11-27_10-00-00.pkl"
    good.write_bytes(data)
    assert state_problem(good) == ""
    (tune / "searcher-state-2026-11-27_11-00-00.pkl").write_bytes(data[:100])
    with pytest.raises(
        StudyError, match=r"searcher-state-2026-11-27_11-00-00.pkl is truncated \(100 bytes, no end mark\)"
    ):
        check_tune_state(storage)


# --- what counts as a full disk, and the guard --------------------------------------------------


def test_full_disks_quota_and_io_errors_are_told_apart_from_other_errors():
    assert (
        disk_full(OSError(errno.ENOSPC, "No space left on device", "/s/train/x/checkpoint.pt"))
        == "No space left on device: /s/train/x/checkpoint.pt"
    )
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    try:  # what MLflow's SQLite store raises, wrapped as MLflow wraps it
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("(sqlite3.OperationalError) ... [SQL: INSERT INTO metrics ...]") from inner
    except RuntimeError as wrapped:
        assert disk_full(wrapped) == "database or disk is full"
    assert disk_full(RuntimeError("Ray worker died: No space left on device")) == "no space left on device"
    assert not disk_full(OSError(errno.ENOENT, "No such file"))
    assert not disk_full(ValueError("loss is NaN"))
    assert not disk_full(None)


def test_the_guard_stops_the_study_below_its_reserve(tmp_path, monkeypatch):
    storage = _storage(tmp_path)
    run = storage.local / "train" / "train_t1" / "checkpoint_2026-11-27_10-00-00.000001"
    run.mkdir(parents=True)
    (run / CHECKPOINT_FILE).write_bytes(b"x" * 3_000_000)
    (run.parent / "checkpoint_manager_snapshot.json").write_text("{}")  # Train's, beside the folders
    stops = []
    old = signal.signal(signal.SIGUSR1, lambda *_: stops.append(1))  # Tune's graceful stop, caught here
    try:
        monkeypatch.setenv("LANDMARK_STUDY_MIN_FREE_MB", "1")
        guard = SpaceGuard(storage)
        assert guard.reserve(None) == 2**20
        assert guard.reserve("t1") == 9_000_000  # three of its newest checkpoints
        guard.check("t1")  # plenty of room here
        assert guard.short is None and stops == []
        monkeypatch.setenv("LANDMARK_STUDY_MIN_FREE_MB", str(10**9))  # more than any disk has
        guard = SpaceGuard(storage)
        guard.check("t1")
        guard.check("t1")  # once is enough
        assert guard.short is not None and stops == [1]
        msg = str(guard.error())
        assert msg.startswith(f"the study storage {storage.local} is out of space: ")
        assert " MiB free of " in msg and msg.endswith("then continue with --resume")
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_the_guard_keeps_a_copy_of_the_readable_state_only(tmp_path):
    storage = _storage(tmp_path)
    tune = storage.local / "tune"
    state = tune / "experiment_state-2026-11-27_11-00-00.json"
    state.write_text(STATE)
    guard = SpaceGuard(storage)
    guard.copy_state()
    assert (tune / COPY / state.name).read_text() == STATE
    state.write_text(STATE[:10])  # caught half-written: the older copy stays
    guard.copy_state()
    assert (tune / COPY / state.name).read_text() == STATE


# --- what a killed driver leaves (issue 14, item 5) ------------------------------------------------


def _holder(folder):
    """A process that keeps a file open in `folder`, as a Ray agent keeps its log open in its session."""
    import subprocess
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"f = open({str(folder / 'agent.log')!r}, 'a'); print('up', flush=True); import time; time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "up"
    return p


def test_the_next_start_stops_the_processes_of_the_killed_drivers_ray_only(tmp_path):
    from study.faults.leftovers import RAY_SESSION, record_ray_session, session_processes, stop_leftover_ray

    storage = _storage(tmp_path)
    ours = tmp_path / "ray" / "session_2026-11-27_10-00-00_000001_42"
    other = tmp_path / "ray" / "session_2026-11-27_10-00-00_000001_420"  # same prefix, another Ray
    agent, bystander = _holder(ours / "logs"), _holder(other / "logs")
    try:
        assert set(session_processes(str(ours))) == {agent.pid}
        record_ray_session(storage, str(ours))
        rec = json.loads((storage.local / RAY_SESSION).read_text())
        assert rec["pids"] == {str(agent.pid): rec["pids"][str(agent.pid)]}
        # this process wrote it and is alive: a record of a live driver is left alone
        assert stop_leftover_ray(storage) == []
        assert agent.poll() is None
        record_ray_session(storage, str(ours))
        rec = json.loads((storage.local / RAY_SESSION).read_text())
        rec["driver_pid"] = 2**22 + 7  # a driver that is gone (no such pid)
        (storage.local / RAY_SESSION).write_text(json.dumps(rec))
        killed = stop_leftover_ray(storage)
        assert [k.split()[0] for k in killed] == [str(agent.pid)]
        assert agent.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None  # another session: untouched
        assert not (storage.local / RAY_SESSION).exists()
        assert stop_leftover_ray(storage) == []  # nothing recorded: nothing to do
    finally:
        for p in (agent, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_record_from_another_host_is_only_reported(tmp_path, capsys):
    from study.faults.leftovers import RAY_SESSION, stop_leftover_ray

    storage = _storage(tmp_path)
    (storage.local / RAY_SESSION).write_text(
        json.dumps(
            {"host": "elsewhere", "driver_pid": 1, "driver_start": "1", "session_dir": "/tmp/ray/session_x", "pids": {}}
        )
    )
    assert stop_leftover_ray(storage) == []
    assert "on elsewhere" in capsys.readouterr().out


def test_checkpoint_folders_no_train_run_registered_are_removed(tmp_path):
    from study.faults.leftovers import remove_orphan_checkpoints

    storage = _storage(tmp_path)
    run = storage.local / "train" / "train_t1"
    names = [f"checkpoint_2026-11-27_10-00-0{i}.000000" for i in range(4)]
    for name in names:
        (run / name).mkdir(parents=True)
        (run / name / CHECKPOINT_FILE).write_bytes(b"x")
    # Train's snapshot (Ray 2.60's layout): epochs 1-2 registered, 3-4 written ahead and never registered
    (run / "checkpoint_manager_snapshot.json").write_text(
        json.dumps(
            {
                "checkpoint_results": [
                    {"checkpoint_dir_name": names[0], "metrics": {"epoch": 1}},
                    {"checkpoint_dir_name": names[1], "metrics": {"epoch": 2}},
                ],
                "latest_checkpoint_result": {"checkpoint_dir_name": names[1]},
                "pending_training_results": [],
                "validated_checkpoint_dir_names": [],
            }
        )
    )
    never = storage.local / "train" / "train_t2" / names[0]  # killed before its first registration
    never.mkdir(parents=True)
    removed = remove_orphan_checkpoints(storage)
    assert sorted(removed) == [f"train/train_t1/{names[2]}", f"train/train_t1/{names[3]}", f"train/train_t2/{names[0]}"]
    assert sorted(p.name for p in run.iterdir()) == [*names[:2], "checkpoint_manager_snapshot.json"]
    assert not never.exists()


def test_unregistered_checkpoint_folders_are_removed_from_an_object_store_too(tmp_path, s3_store, monkeypatch):
    """The same clean-up on s3:// (a real S3-compatible server on loopback), where a folder is a key prefix."""
    from study.faults.leftovers import remove_orphan_checkpoints

    for key, value in s3_store["env"].items():
        monkeypatch.setenv(key, value)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"study: {{name: s1, storage: 's3://{s3_store['bucket']}/orphans'}}\n")
    storage = StudyStorage(load_spec(spec))
    client, bucket, run = s3_store["client"], s3_store["bucket"], "orphans/s1/train/train_t1"
    names = [f"checkpoint_2026-11-27_10-00-0{i}.000000" for i in range(3)]
    for name in names:
        client.put_object(Bucket=bucket, Key=f"{run}/{name}/{CHECKPOINT_FILE}", Body=b"x")
    client.put_object(
        Bucket=bucket,
        Key=f"{run}/checkpoint_manager_snapshot.json",
        Body=json.dumps(
            {
                "checkpoint_results": [{"checkpoint_dir_name": names[0]}],
                "latest_checkpoint_result": {"checkpoint_dir_name": names[0]},
            }
        ).encode(),
    )
    assert remove_orphan_checkpoints(storage) == [f"train/train_t1/{names[1]}", f"train/train_t1/{names[2]}"]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="orphans/")["Contents"]}
    keys.discard(f"{run}/")  # pyarrow's empty-directory marker, kept so that the run's folder still exists
    assert keys == {f"{run}/{names[0]}/{CHECKPOINT_FILE}", f"{run}/checkpoint_manager_snapshot.json"}


def test_tunes_search_generator_state_is_a_pickle_named_json_and_is_checked(tmp_path):
    import pickle

    storage = _storage(tmp_path)
    tune = storage.local / "tune"
    (tune / "experiment_state-2026-11-27_11-00-00.json").write_text(STATE)
    gen = tune / "search_gen_state-2026-11-27_11-00-00.json"
    data = pickle.dumps({"counter": 2, "total_samples": 2, "pad": list(range(300))})
    gen.write_bytes(data)
    assert state_problem(gen) == ""
    check_tune_state(storage)
    gen.write_bytes(data[: len(data) // 2])  # a restore would fail on it and Tune would start over
    with pytest.raises(StudyError, match=f"Tune's state {gen} is truncated"):
        check_tune_state(storage)
