"""The tracking outbox: events the tracking server could not take wait, in order, on disk, and are
delivered once when it answers. A closed loopback port plays the server that is down; the server
that comes back is a real SQLite MLflow store (nothing mocked)."""

from __future__ import annotations

import json
import socket
import textwrap
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from study.spec import load_spec
from study.faults.outbox import OUTBOX, unreachable
from study.study_run import open_study_run
from study.tracking import MlflowTracking
from study.trial import RESUMED_CHECKPOINT, RESUMED_FROM, checkpoint_history, train_run_name
from trainables.checkpoint import HISTORY_FILE


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _study(tmp_path, name: str):
    """A one-parameter study with a real SQLite MLflow store: (spec, store URI, its study run)."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        textwrap.dedent(f"""\
        study: {{name: {name}, storage: {tmp_path / "store"}}}
        space:
          optim.lr: {{loguniform: [1.0e-4, 1.0e-2]}}
        """)
    )
    spec = load_spec(spec_file)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return spec, store, open_study_run(store, spec)


def _trial_run(client, study_run, tid: str):
    (run,) = [r for r in client.search_runs([study_run.experiment_id]) if r.data.tags.get("tune.trial_id") == tid]
    return run


def test_events_wait_while_the_server_is_down_and_are_delivered_in_order_once(tmp_path, capsys):
    spec, store, study_run = _study(tmp_path, "outbox")
    tracking = MlflowTracking(
        f"http://127.0.0.1:{_closed_port()}", study_run, spec, str(tmp_path / "train"), outbox=tmp_path / OUTBOX
    )
    config = {"optim.lr": 0.001}
    tracking._enqueue({"op": "start", "tid": "t1", "config": config})
    for epoch in (1, 2):
        tracking._enqueue(
            {
                "op": "result",
                "tid": "t1",
                "config": config,
                "result": {"epoch": epoch, "train/loss": 1.0 / epoch, "val/mre_mm": 5.0 - epoch},
            }
        )
    assert not tracking.flush()  # the delivery thread, then this one, found the server down
    assert [e["op"] for e in tracking.queue] == ["start", "result", "result"]
    saved = [json.loads(line) for line in (tmp_path / OUTBOX).read_text().splitlines()]
    assert saved == tracking.queue  # on disk, in order: a killed driver's --resume finds them
    assert "MLflow unreachable" in capsys.readouterr().out

    # The server is back (here: the real store). A new session reads the outbox and delivers it.
    back = MlflowTracking(store, study_run, spec, str(tmp_path / "train"), outbox=tmp_path / OUTBOX)
    assert len(back.queue) == 3
    assert back.deliver(force=True)
    assert back.queue == [] and not (tmp_path / OUTBOX).exists()
    client = MlflowClient(store)
    run = _trial_run(client, study_run, "t1")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mre_mm")] == [1, 2]
    assert run.data.params["optim.lr"] == "0.001"
    # Replayed again (a kill between delivery and truncation): still one entry per epoch.
    again = MlflowTracking(store, study_run, spec, str(tmp_path / "train"))
    again.queue = saved
    assert again.deliver(force=True)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mre_mm")] == [1, 2]


def test_what_counts_as_unreachable():
    from mlflow.exceptions import MlflowException

    assert unreachable(ConnectionRefusedError("refused"))
    assert unreachable(
        MlflowException(
            "API request to http://x/api/2.0/mlflow/runs/create failed with exception "
            "HTTPConnectionPool(host='x'): Max retries exceeded"
        )
    )
    assert not unreachable(MlflowException("INVALID_PARAMETER_VALUE: Param value too long"))


def test_a_resumed_checkpoint_delivers_the_epochs_mlflow_lacks_once_in_order(tmp_path):
    # After a driver SIGKILL, Train went on and saved the epoch-4 checkpoint; MLflow got epochs 1-2 only.
    spec, store, study_run = _study(tmp_path, "replay")
    train = tmp_path / "train"
    history = [{"epoch": e, "train/loss": 1.0 / e, "val/mre_mm": 9.0 - e} for e in (1, 2, 3, 4)]
    folder = train / train_run_name("t1") / "checkpoint_000003"
    folder.mkdir(parents=True)
    (folder / HISTORY_FILE).write_text(json.dumps(history))
    trial = SimpleNamespace(trial_id="t1", config={"optim.lr": 0.001})

    first = MlflowTracking(store, study_run, spec, str(train))
    first.on_trial_start(0, [trial], trial)
    for metrics in history[:2]:
        first.on_trial_result(0, [trial], trial, metrics)
    assert first.flush()

    resumed = MlflowTracking(store, study_run, spec, str(train))  # the --resume's driver
    resumed.on_trial_start(0, [trial], trial)
    resumed.on_trial_result(0, [trial], trial, {**history[3], RESUMED_CHECKPOINT: folder.name, RESUMED_FROM: 4})
    resumed.on_trial_result(0, [trial], trial, {"epoch": 5, "train/loss": 0.2, "val/mre_mm": 4.0})
    assert resumed.flush()
    client = MlflowClient(store)
    run = _trial_run(client, study_run, "t1")
    entries = sorted(client.get_metric_history(run.info.run_id, "val/mre_mm"), key=lambda m: m.timestamp)
    assert [(m.step, m.value) for m in entries] == [(1, 8.0), (2, 7.0), (3, 6.0), (4, 5.0), (5, 4.0)]

    # Resumed again from the same checkpoint (another kill): nothing logged twice.
    again = MlflowTracking(store, study_run, spec, str(train))
    again.on_trial_start(0, [trial], trial)
    again.on_trial_result(0, [trial], trial, {**history[3], RESUMED_CHECKPOINT: folder.name, RESUMED_FROM: 4})
    assert again.flush()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mre_mm")] == [1, 2, 3, 4, 5]


def test_a_checkpoint_without_history_replays_nothing(tmp_path):
    # Written before history.json existed: only its own epoch is re-reported (as before).
    assert checkpoint_history(str(tmp_path), "t1", "checkpoint_000000") == []


def test_a_trial_that_fails_for_good_delivers_the_epochs_its_checkpoints_hold(tmp_path):
    # The worker checkpointed epochs 3 and 4 and died before they reached the driver; with no restart
    # left the trial fails and is never resumed: its furthest checkpoint's history fills MLflow's gap.
    spec, store, study_run = _study(tmp_path, "failed")
    train = tmp_path / "train"
    history = [{"epoch": e, "train/loss": 1.0 / e, "val/mre_mm": 9.0 - e} for e in (1, 2, 3, 4)]
    for n, name in ((3, "checkpoint_000002"), (4, "checkpoint_000003")):
        (train / train_run_name("t1") / name).mkdir(parents=True)
        (train / train_run_name("t1") / name / HISTORY_FILE).write_text(json.dumps(history[:n]))
    (train / train_run_name("t1") / "checkpoint_000004").mkdir()  # cut short by the kill: no history
    trial = SimpleNamespace(trial_id="t1", config={"optim.lr": 0.001})

    tracking = MlflowTracking(store, study_run, spec, str(train))
    tracking.on_trial_start(0, [trial], trial)
    for metrics in history[:2]:
        tracking.on_trial_result(0, [trial], trial, metrics)
    tracking.on_trial_error(0, [trial], trial)
    assert tracking.flush()
    client = MlflowClient(store)
    run = _trial_run(client, study_run, "t1")
    entries = sorted(client.get_metric_history(run.info.run_id, "val/mre_mm"), key=lambda m: m.timestamp)
    assert [(m.step, m.value) for m in entries] == [(1, 8.0), (2, 7.0), (3, 6.0), (4, 5.0)]
    assert run.data.tags["trial.status"] == "failed" and run.info.status == "FAILED"
