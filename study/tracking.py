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

import math
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from dashboards.publish import StudyInfo, publish_study, publish_trial
from study.schema import (
    FINAL,
    ROLE_TRIAL,
    TAG_CONFIG,
    TAG_NODE,
    TAG_NODE_IP,
    TAG_PARENT,
    TAG_REPEAT,
    TAG_RESTARTS,
    TAG_ROLE,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL,
    Status,
    error_outcome,
    tag_filter,
)
from study.faults.outbox import Outbox, unreachable
from study.spec import Spec
from study.study_run import StudyRun
from study.trial import (
    RESTARTS,
    RESUMED_CHECKPOINT,
    checkpoint_history,
    completed_outcome,
    furthest_history,
    train_run_name,
)
from trainables.config import flatten


class MlflowTracking(Outbox, Callback):
    """Tune callback: trial lifecycle and per-epoch results -> MLflow child runs.

    Every event goes through an outbox (study.faults.outbox: in memory, and appended to
    `<study>/mlflow_outbox.jsonl` on a local storage) and is delivered in order. When the tracking server does not answer, the
    events wait there and the study goes on; they are delivered, in order and once (each epoch of a
    trial is logged once, whatever is replayed), when it answers again, or by `--resume`.
    """

    def __init__(self, uri: str, study_run: StudyRun, spec: Spec, train_storage: str, outbox: Path | None = None):
        self.uri = uri
        self.study_run = study_run
        self.study_name = spec.study.name
        self.spec = spec
        self.info = StudyInfo(
            spec.study.name,
            study_run.experiment_id,
            study_run.run_id,
            [(o.metric, o.mode) for o in spec.study.objectives],
            dict(spec.space),
        )
        self.train_storage = train_storage  # the Train runs' checkpoints: the trial pictures come from there
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged_epochs: dict[str, set[int]] = {}
        self._last_ms: dict[str, int] = {}  # trial id -> the timestamp of its last logged epoch
        self.outcomes: dict[str, Status] = {}  # trial id -> one of FINAL, once the trial has ended
        self._placed: set[str] = set()  # trials whose node is tagged
        self._restarts: dict[str, tuple[int, int]] = {}  # trial id -> (restarts before this session, seen now)
        self._open_outbox(outbox)  # study.faults.outbox: sets os.environ's MLflow HTTP settings first

    def __getstate__(self):  # Tune saves callbacks with the experiment; the client and the thread are rebuilt
        state = super().__getstate__()
        state["_client"] = None
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    # --- the outbox ---------------------------------------------------------------------------

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
            self._replay(
                trial,
                lambda: checkpoint_history(self.train_storage, trial.trial_id, checkpoint),
                before=result.get("epoch"),
                what=f"the history of {checkpoint}",
            )
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
            print(
                f"warning: trial {tid}: {what} was not read ({e!r}); epochs in it that MLflow lacks stay missing",
                flush=True,
            )
            return
        logged = self._logged_epochs.get(tid, set())
        for earlier in sorted(
            (
                m
                for m in history
                if isinstance(m.get("epoch"), int)
                and m["epoch"] not in logged
                and (before is None or (isinstance(before, int) and m["epoch"] < before))
            ),
            key=lambda m: m["epoch"],
        ):
            self._enqueue({"op": "result", "tid": tid, "config": trial.config, "result": _loggable(earlier)})

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Tune retries a trial whose process was lost: one more restart; its new controller counts from 0.
        self._enqueue({"op": "recover", "tid": trial.trial_id, "config": trial.config})

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune calls this before it marks the trial TERMINATED: the epoch count decides.
        status = completed_outcome(trial, self.spec)
        self.outcomes[trial.trial_id] = status
        self._enqueue(
            {
                "op": "end",
                "tid": trial.trial_id,
                "config": trial.config,
                "status": status.value,
                "run_status": RunStatus.FINISHED,
            }
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        # Workers that failed for good may have checkpointed epochs that never came as results; the run gets
        # the best checkpoint, so it gets those epochs too (from the furthest checkpoint's history).
        self._replay(
            trial,
            lambda: furthest_history(self.train_storage, trial.trial_id),
            before=None,
            what="the history of the trial's furthest checkpoint",
        )
        status = error_outcome(trial)
        self.outcomes[trial.trial_id] = status
        self._enqueue(
            {
                "op": "end",
                "tid": trial.trial_id,
                "config": trial.config,
                "status": status.value,
                "run_status": RunStatus.FAILED,
            }
        )

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
            tags={
                TAG_STUDY: self.study_name,
                TAG_ROLE: ROLE_TRIAL,
                TAG_TRIAL: tid,
                TAG_PARENT: self.study_run.run_id,
                # the configuration this run repeats (study.repeats); a trial without them is its own, repeat 0
                TAG_CONFIG: str(config.get(TAG_CONFIG, tid)),
                TAG_REPEAT: str(config.get(TAG_REPEAT, 0)),
            },
        )
        params = flatten(self.spec.trial_config(config))  # train.seed included: the repeat's seed
        logged = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for i in range(0, len(logged), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=logged[i : i + 100])
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
            tags += [
                RunTag(TAG_NODE, str(result["worker_node_id"])),
                RunTag(TAG_NODE_IP, str(result.get("worker_node_ip"))),
            ]
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
            publish_trial(
                self.client,
                run_id,
                f"{self.train_storage}/{train_run_name(tid)}",
                self.info.objectives[0],
                adaloss=adaloss,
            )
        except Exception as e:  # a picture must never stop a study
            if unreachable(e):
                raise  # the end event stays queued, pictures included
            print(f"warning: trial {tid}: pictures not logged: {e!r}", flush=True)

    def refresh(self, importance: bool = False):
        """Re-rank the study and rewrite its comparison (dashboards.pareto.refresh). -> the table, or None."""
        try:
            return publish_study(self.client, self.info, importance=importance)
        except Exception as e:
            print(
                f"warning: the Pareto comparison was not updated: {e!r}; "
                f"`python -m dashboards.pareto {self.study_name} --write` redoes it",
                flush=True,
            )
            return None


def _loggable(result: dict) -> dict:
    """What an outbox event keeps of a Tune result: the metrics, the epoch, the restarts and the node."""
    return {
        k: v
        for k, v in result.items()
        if ("/" in k or k in ("epoch", RESTARTS, "worker_node_id", "worker_node_ip"))
        and isinstance(v, (int, float, str))
        and not isinstance(v, bool)
    }


def _param_value(v) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, list) else str(v)
