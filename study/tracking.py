"""MLflow tracking, done on the driver: one experiment per study, one parent run for the study,
one child run per Tune trial, looked up by tag so that a resumed study never duplicates a run.

    uri = resolve_tracking_uri(None, spec)            # study.study_run: sqlite:///…/studies/mlflow.db by default
    check_reachable(uri)                               # before any trial starts
    study_run = open_study_run(uri, spec)              # study.study_run: (experiment id, parent run id)
    callback = MlflowTracking(uri, study_run, spec, train_storage)   # a ray.tune.Callback

Metric names are the trainer's (`val/mre_mm`) with `step=epoch`; params are the trial's dotted
config (`optim.lr`, and `train.seed`, which differs between repeats); every trial run is tagged with
the configuration it trains (`config.id`) and its repeat (`config.repeat`, 0 without repeats).
Tag names and statuses are study.schema's; the pictures and the comparison
are drawn by dashboards/, called through dashboards.publish.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from dashboards.publish import StudyInfo, publish_study, publish_trial
from study.schema import (FINAL, ROLE_TRIAL, TAG_CONFIG, TAG_NODE, TAG_NODE_IP, TAG_PARENT, TAG_REPEAT, TAG_RESTARTS,
                          TAG_ROLE, TAG_STATUS, TAG_STUDY, TAG_TRIAL, Status, error_outcome, tag_filter)
from study.integrity import disk_full
from study.spec import Spec
# The study's parent run is study.study_run's; study.tuner still calls four of its functions as tracking.*.
from study.study_run import StudyRun, close_study_run, open_study_run, prepare_store, resolve_tracking_uri  # noqa: F401
from study.trial import (RESTARTS, RESUMED_CHECKPOINT, checkpoint_history, completed_outcome, furthest_history,
                         train_run_name)
from trainables.config import flatten


class _QuietFullDisk(logging.Filter):
    """Drop MLflow's logged traceback of a SQLite store whose disk is full: the study ends with one line
    naming the folder and its free space (run_study), and what was not written waits in the outbox."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and disk_full(record.exc_info[1]))


logging.getLogger("mlflow.store.db.utils").addFilter(_QuietFullDisk())


# The driver's MLflow client gives up fast: results it cannot deliver wait in the outbox instead of
# freezing the study (MLflow's default retries a call for about 2 minutes).
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
RETRY_S = 10.0  # while the server is unreachable, try again at most this often
OUTBOX = "mlflow_outbox.jsonl"  # in a local study folder: what was not delivered yet, in order
OUTBOX_LIMIT = 50_000  # queued events; past it, epoch results are dropped (a warning says so)


def unreachable(error: BaseException) -> bool:
    """Whether an MLflow client error says the server could not be reached (as opposed to a refusal)."""
    text = f"{type(error).__name__}: {error}"
    return isinstance(error, (ConnectionError, TimeoutError, OSError)) or any(
        w in text for w in ("API request to", "Max retries exceeded", "Connection refused", "ConnectionError",
                            "Read timed out", "RemoteDisconnected", "503", "502", "504"))


class MlflowTracking(Callback):
    """Tune callback: trial lifecycle and per-epoch results -> MLflow child runs.

    Every event goes through an outbox (in memory, and appended to `<study>/mlflow_outbox.jsonl`
    on a local storage) and is delivered in order. When the tracking server does not answer, the
    events wait there and the study goes on; they are delivered, in order and once (each epoch of a
    trial is logged once, whatever is replayed), when it answers again, or by `--resume`.
    """

    def __init__(self, uri: str, study_run: StudyRun, spec: Spec, train_storage: str, outbox: Path | None = None):
        for key, value in HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)
        self.uri = uri
        self.study_run = study_run
        self.study_name = spec.study.name
        self.spec = spec
        self.info = StudyInfo(spec.study.name, study_run.experiment_id, study_run.run_id,
                              [(o.metric, o.mode) for o in spec.study.objectives], dict(spec.space))
        self.train_storage = train_storage  # the Train runs' checkpoints: the trial pictures come from there
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged_epochs: dict[str, set[int]] = {}
        self._last_ms: dict[str, int] = {}  # trial id -> the timestamp of its last logged epoch
        self.outcomes: dict[str, Status] = {}  # trial id -> one of FINAL, once the trial has ended
        self._placed: set[str] = set()  # trials whose node is tagged
        self._restarts: dict[str, tuple[int, int]] = {}  # trial id -> (restarts before this session, seen now)
        self.outbox_path = outbox
        self.queue: list[dict] = _read_outbox(outbox)
        self._down_since: float | None = None  # when a delivery last failed (None: the server answers)
        self._last_try = 0.0
        self._dropped = 0
        self._threads()

    def _threads(self) -> None:
        # Delivery runs on a thread of its own, so that MLflow's writes, the trial's pictures and the
        # comparison never hold up Tune's loop (ASHA's decisions, the other trials' results). Tune's
        # loop only appends each event to the outbox (memory and file) and wakes the thread.
        self._queue_lock = threading.Lock()  # the queue and the outbox file change together
        self._send_lock = threading.Lock()  # one delivery at a time: the thread's or a flush
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None
        self._error: BaseException | None = None  # what stopped the thread (a full disk), raised on the loop

    def __getstate__(self):  # Tune saves callbacks with the experiment; the client and the thread are rebuilt
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_queue_lock", "_send_lock", "_wake", "_sender", "_error")}
        state["_client"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._threads()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    # --- the outbox ---------------------------------------------------------------------------

    def _enqueue(self, event: dict) -> None:
        """Queue an event for MLflow (on Tune's loop: a file append, no network)."""
        self._raise_from_sender()
        if len(self.queue) >= OUTBOX_LIMIT and event["op"] == "result":
            self._dropped += 1
            if self._dropped == 1:
                print(f"warning: MLflow has been unreachable for long: {OUTBOX_LIMIT} events are queued; epoch "
                      f"results past that are dropped (the checkpoints keep their metrics)", flush=True)
            return
        with self._queue_lock:
            self.queue.append(event)
            if self.outbox_path is not None:
                with open(self.outbox_path, "a") as f:
                    f.write(json.dumps(event) + "\n")
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_in_background, name="mlflow-outbox", daemon=True)
            self._sender.start()
        self._wake.set()

    def _send_in_background(self) -> None:
        while True:
            self._wake.wait(timeout=RETRY_S if self._down_since is not None else None)
            self._wake.clear()
            try:
                self.deliver()
            except BaseException as e:  # noqa: BLE001 - a full disk: raised on Tune's loop (_enqueue, flush)
                self._error = e
                return

    def _raise_from_sender(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def flush(self) -> bool:
        """Deliver everything queued now, waiting for the thread's delivery in progress; one attempt
        even while the server has been unreachable. -> everything delivered."""
        self._raise_from_sender()
        return self.deliver(force=True)

    def deliver(self, force: bool = False) -> bool:
        """Send what is queued, in order, until the server fails to answer. -> everything delivered."""
        with self._send_lock:
            return self._deliver(force)

    def _deliver(self, force: bool) -> bool:
        if not self.queue:
            return True
        now = time.monotonic()
        if self._down_since is not None and not force and now - self._last_try < RETRY_S:
            return False
        self._last_try = now
        sent = 0
        while self.queue:
            try:
                self._apply(self.queue[0])
            except Exception as e:  # noqa: BLE001 - sorted below: unreachable waits, anything else is dropped
                if disk_full(e):  # the SQLite store's disk is full: kept in the outbox; the study ends (run_study)
                    raise
                if not unreachable(e):
                    print(f"warning: MLflow refused {self.queue[0]['op']} of trial {self.queue[0].get('tid')}: "
                          f"{str(e)[:300]}; skipped", flush=True)
                    with self._queue_lock:
                        self.queue.pop(0)
                    continue
                if self._down_since is None:
                    self._down_since = now
                print(f"MLflow unreachable ({self.uri}), {len(self.queue)} results queued; the study goes on",
                      flush=True)
                return False
            with self._queue_lock:
                self.queue.pop(0)
            sent += 1
        if self._down_since is not None:
            print(f"MLflow answers again: delivered {sent} queued results "
                  f"(unreachable for {now - self._down_since:.0f} s)", flush=True)
            self._down_since = None
        with self._queue_lock:
            if not self.queue and self.outbox_path is not None:  # an event queued meanwhile keeps the file
                self.outbox_path.unlink(missing_ok=True)
            return not self.queue

    def _apply(self, event: dict) -> None:
        op, tid, config = event["op"], event.get("tid"), event.get("config", {})
        if op == "start":
            run_id = self.run_for(tid, config)
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, TAG_STATUS, Status.RUNNING.value)
        elif op == "result":
            self._log_result(tid, config, event["result"])
        elif op == "recover":
            run_id = self.run_for(tid, config)
            before, now = self._restarts.get(tid, (int(self.client.get_run(run_id).data.tags.get(TAG_RESTARTS, 0)), 0))
            self._restarts[tid] = (before + now + 1, 0)
            self.client.set_tag(run_id, TAG_RESTARTS, str(before + now + 1))
        elif op == "end":
            self._end(tid, config, Status(event["status"]), event["run_status"])
        elif op == "interrupted":  # Ctrl-C: a trial that had not ended by then
            if tid not in self.outcomes and self.find_run(tid) and self.outcome(tid) == Status.INTERRUPTED:
                self._end(tid, config, Status.INTERRUPTED, RunStatus.KILLED)

    # --- Tune's events --------------------------------------------------------------------------

    def setup(self, **info):
        if self.queue:  # left by an earlier session (the server was down when it ended)
            print(f"delivering {len(self.queue)} MLflow results queued by an earlier session", flush=True)
            self.flush()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._enqueue({"op": "start", "tid": trial.trial_id, "config": trial.config})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if RESUMED_CHECKPOINT in result:  # a resumed run: first the epochs before its checkpoint's that MLflow lacks
            checkpoint = result[RESUMED_CHECKPOINT]
            self._replay(trial, lambda: checkpoint_history(self.train_storage, trial.trial_id, checkpoint),
                         before=result.get("epoch"), what=f"the history of {checkpoint}")
        self._enqueue({"op": "result", "tid": trial.trial_id, "config": trial.config, "result": _loggable(result)})

    def _replay(self, trial, read_history, before, what: str) -> None:
        """Queue the epochs before `before` (all, if None) in a checkpoint's history.json that are not known
        to be in MLflow, oldest first. After a driver SIGKILL, Train can go on for a moment and save a
        checkpoint whose epochs never reached the dead driver, and the resume continues after it; a trial
        whose workers fail for good is not resumed at all. Each epoch is still logged once (_log_result)."""
        tid = trial.trial_id
        try:
            history = read_history()
        except Exception as e:  # noqa: BLE001 - unreadable storage: the study goes on, but say what may be missing
            print(f"warning: trial {tid}: {what} was not read ({e!r}); epochs in it that MLflow lacks stay missing",
                  flush=True)
            return
        logged = self._logged_epochs.get(tid, set())
        for earlier in sorted((m for m in history if isinstance(m.get("epoch"), int) and m["epoch"] not in logged
                               and (before is None or (isinstance(before, int) and m["epoch"] < before))),
                              key=lambda m: m["epoch"]):
            self._enqueue({"op": "result", "tid": tid, "config": trial.config, "result": _loggable(earlier)})

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Tune retries a trial whose process was lost: one more restart; its new controller counts from 0.
        self._enqueue({"op": "recover", "tid": trial.trial_id, "config": trial.config})

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune calls this before it marks the trial TERMINATED: the epoch count decides.
        status = completed_outcome(trial, self.spec)
        self.outcomes[trial.trial_id] = status
        self._enqueue({"op": "end", "tid": trial.trial_id, "config": trial.config, "status": status.value,
                       "run_status": RunStatus.FINISHED})

    def on_trial_error(self, iteration, trials, trial, **info):
        # Workers that failed for good may have checkpointed epochs that never came as results; the run gets
        # the best checkpoint, so it gets those epochs too (from the furthest checkpoint's history).
        self._replay(trial, lambda: furthest_history(self.train_storage, trial.trial_id), before=None,
                     what="the history of the trial's furthest checkpoint")
        status = error_outcome(trial)
        self.outcomes[trial.trial_id] = status
        self._enqueue({"op": "end", "tid": trial.trial_id, "config": trial.config, "status": status.value,
                       "run_status": RunStatus.FAILED})

    def on_experiment_end(self, trials, **info):
        # After Ctrl-C Tune stops the running trials like finished ones (TERMINATED) but never
        # calls on_trial_complete: their runs would say "running" forever. --resume reopens them.
        for trial in trials:
            if trial.trial_id not in self.outcomes:
                self._enqueue({"op": "interrupted", "tid": trial.trial_id, "config": trial.config})
        self.flush()

    # --- MLflow ---------------------------------------------------------------------------------

    def find_run(self, tid: str) -> str | None:
        """The trial's MLflow run id, from memory or by tag (after a restart), or None."""
        if tid in self._runs:
            return self._runs[tid]
        found = self.client.search_runs(
            [self.study_run.experiment_id],
            filter_string=tag_filter(**{TAG_TRIAL: tid, TAG_STUDY: self.study_name}),
        )
        if not found:
            return None
        run = found[0]
        self._runs[tid] = run.info.run_id
        self._logged_epochs[tid] = {m.step for m in self.client.get_metric_history(run.info.run_id, "train/loss")}
        if run.data.tags.get(TAG_STATUS) in FINAL:
            self.outcomes[tid] = Status(run.data.tags[TAG_STATUS])
        return run.info.run_id

    def run_for(self, tid: str, config: dict) -> str:
        """The trial's MLflow run, found again or created with the trial's params."""
        run_id = self.find_run(tid)
        if run_id is not None:
            return run_id
        run = self.client.create_run(
            self.study_run.experiment_id,
            run_name=f"{self.study_name}-{tid.split('_')[-1]}",
            tags={TAG_STUDY: self.study_name, TAG_ROLE: ROLE_TRIAL, TAG_TRIAL: tid, TAG_PARENT: self.study_run.run_id,
                  # the configuration this run repeats (study.repeats); a trial without them is its own, repeat 0
                  TAG_CONFIG: str(config.get(TAG_CONFIG, tid)), TAG_REPEAT: str(config.get(TAG_REPEAT, 0))},
        )
        params = flatten(self.spec.trial_config(config))  # train.seed included: the repeat's seed
        logged = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for i in range(0, len(logged), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=logged[i:i + 100])
        self._runs[tid] = run.info.run_id
        self._logged_epochs[tid] = set()
        return run.info.run_id

    def outcome(self, tid: str) -> Status:
        """The trial's final status as recorded (this run or an earlier one); else INTERRUPTED."""
        if tid not in self.outcomes:
            try:
                self.find_run(tid)
            except Exception as e:  # noqa: BLE001 - the server may be down: what this session saw stands
                if not unreachable(e):
                    raise
        return self.outcomes.get(tid, Status.INTERRUPTED)

    def _log_result(self, tid: str, config: dict, result: dict) -> None:
        run_id = self.run_for(tid, config)
        epoch = result.get("epoch")
        tags = self._restart_tags(tid, run_id, result.get(RESTARTS, 0))
        if tags:
            self._placed.discard(tid)  # a restarted trial may run on another node
        if tid not in self._placed and "worker_node_id" in result:  # once per driver session:
            self._placed.add(tid)  # a resumed trial may land on another node
            tags += [RunTag(TAG_NODE, str(result["worker_node_id"])), RunTag(TAG_NODE_IP, str(result.get("worker_node_ip")))]
        if epoch is None or epoch in self._logged_epochs[tid]:
            if tags:  # a resumed trial re-reports its checkpoint's epoch: log each (trial, epoch) once
                self.client.log_batch(run_id, tags=tags)
            return
        # Strictly increasing per trial, so that replayed epochs (logged within one millisecond) keep their order.
        now = max(int(time.time() * 1000), self._last_ms.get(tid, 0) + 1)
        self._last_ms[tid] = now
        metrics = [
            Metric(k, float(v), now, int(epoch))
            for k, v in result.items()
            if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self._logged_epochs[tid].add(epoch)

    def _restart_tags(self, tid: str, run_id: str, seen: int) -> list[RunTag]:
        """`trial.restarts`: the trial's worker-group restarts over all driver sessions."""
        if tid not in self._restarts:
            before = int(self.client.get_run(run_id).data.tags.get(TAG_RESTARTS, 0))
            self._restarts[tid] = (before, 0)
        before, now = self._restarts[tid]
        if seen <= now:
            return []
        self._restarts[tid] = (before, seen)
        return [RunTag(TAG_RESTARTS, str(before + seen))]

    def _end(self, tid: str, config: dict, status: Status, run_status: int) -> None:
        if status in FINAL:
            self.outcomes[tid] = status
        run_id = self.run_for(tid, config)
        self.client.log_batch(run_id, tags=[RunTag(TAG_STATUS, status.value)])
        self.client.set_terminated(run_id, RunStatus.to_string(run_status))
        if status in FINAL:  # an interrupted trial continues on --resume: its pictures come then
            self._pictures(tid, config, run_id)
            if not any(e["op"] == "end" for e in self.queue[1:]):  # trials ending together: one comparison
                self.refresh()

    def _pictures(self, tid: str, config: dict, run_id: str) -> None:
        adaloss = self.spec.trial_config(config).target.schedule == "adaloss"
        try:
            publish_trial(self.client, run_id, f"{self.train_storage}/{train_run_name(tid)}",
                          self.info.objectives[0], adaloss=adaloss)
        except Exception as e:  # a picture must never stop a study
            if unreachable(e):
                raise  # the end event stays queued, pictures included
            print(f"warning: trial {tid}: pictures not logged: {e!r}", flush=True)

    def refresh(self, importance: bool = False):
        """Re-rank the study and rewrite its comparison (dashboards.pareto.publish_study). -> the table, or None."""
        try:
            return publish_study(self.client, self.info, importance=importance)
        except Exception as e:
            print(f"warning: the Pareto comparison was not updated: {e!r}; "
                  f"`python -m dashboards.pareto {self.study_name} --write` redoes it", flush=True)
            return None


def _loggable(result: dict) -> dict:
    """What an outbox event keeps of a Tune result: the metrics, the epoch, the restarts and the node."""
    return {k: v for k, v in result.items() if ("/" in k or k in ("epoch", RESTARTS, "worker_node_id", "worker_node_ip"))
            and isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _read_outbox(path: Path | None) -> list[dict]:
    """The events an earlier session could not deliver (a line cut short by a kill is skipped)."""
    if path is None or not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events



def _param_value(v) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, list) else str(v)
