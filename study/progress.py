"""The study's console: one line per trial start, per epoch and per trial end, with the best value
of each objective so far.

    [00:42] start  1b312452  target.schedule=adaloss, optim.lr=0.0003
    [00:51] epoch  1b312452  3/10  train/loss=0.0123  val/mre_mm=4.1  | best val/mre_mm=4.1 (1b312452)
    [01:30] finished  1b312452  (2/4 trials done, 1 running)

With study.repeats > 1 each trial is named with its configuration and repeat, and the count is of
trials (configurations × repeats):

    [00:42] start  1b312452 (config 2, repeat 2/3)  target.schedule=adaloss, optim.lr=0.0003
"""

from __future__ import annotations

import math
import time

from ray import tune

from study.schema import TAG_CONFIG, TAG_REPEAT, Status, error_outcome
from study.spec import Spec
from study.trial import RESTARTS, RESUMED_FROM, stopped_early
from trainables.ray_adapter import DIVERGED


class Progress(tune.Callback):
    """Tune callback that prints the study's progress (see the module docstring)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.objectives = [(o.metric, o.mode) for o in spec.study.objectives]
        self.trials = spec.total_trials  # Tune trials: configurations × repeats
        self.repeats = spec.study.repeats
        self.numbers: dict[str, int] = {}  # config.id -> its number, from 1 (see name)
        self.best: dict[str, tuple[float, str]] = {}
        self.restarts: dict[str, int] = {}  # trial id -> worker-group restarts seen in this session
        self.done = 0
        self.t0 = time.monotonic()

    def __setstate__(self, state):  # restored with the experiment on --resume: restart the clock
        self.__dict__.update(state)
        self.t0 = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        params = ", ".join(f"{k}={fmt(trial.config[k])}" for k in self.spec.space if k in trial.config)
        print(f"[{self._clock()}] start  {self.name(trial, trials)}  {params}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if DIVERGED in result:  # the diverged trial's last word; on_trial_error prints its line
            return
        restarts = result.get(RESTARTS, 0)
        if restarts > self.restarts.get(trial.trial_id, 0):
            self.restarts[trial.trial_id] = restarts
            self._restarted(trial, result.get(RESUMED_FROM, 0), restarts)
        values = []
        for metric, mode in self.objectives:
            v = result.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                old = self.best.get(metric)
                if old is None or (v < old[0] if mode == "min" else v > old[0]):
                    self.best[metric] = (v, trial.trial_id)
            values.append(f"{metric}={fmt(v)}")
        best = "  ".join(f"{m}={self.best[m][0]:.4g} ({self.best[m][1]})" for m, _ in self.objectives if m in self.best)
        epochs = self.spec.trial_config(trial.config).train.epochs
        print(
            f"[{self._clock()}] epoch  {self.name(trial, trials)}  {result.get('epoch')}/{epochs}  "
            f"train/loss={fmt(result.get('train/loss'))}  {'  '.join(values)}  | best {best or '-'}",
            flush=True,
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Tune retries the trial (its process or node was lost): it resumes from its checkpoint.
        self.restarts[trial.trial_id] = 0  # a new Train controller counts from 0 again
        print(
            f"[{self._clock()}] restarted {trial.trial_id} (its process was lost; it resumes from its latest "
            f"checkpoint)",
            flush=True,
        )

    def _restarted(self, trial, epoch: int, restarts: int) -> None:
        most = self.spec.resources.max_failures
        print(
            f"[{self._clock()}] restarted {trial.trial_id} from epoch {epoch} ({restarts}/{'∞' if most < 0 else most})",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done = _ended(trials, trial)
        early = stopped_early(trial, self.spec)
        outcome = f"stopped early at epoch {trial.last_result.get('epoch')}" if early else "finished"
        print(
            f"[{self._clock()}] {outcome}  {self.name(trial, trials)}  ({self.done}/{self.trials} trials done, "
            f"{_running(trials, trial)})",
            flush=True,
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done = _ended(trials, trial)
        if error_outcome(trial) == Status.DIVERGED:
            epoch = (trial.last_result or {}).get("epoch", 0) + 1
            print(
                f"[{self._clock()}] diverged {self.name(trial, trials)} at epoch {epoch} (NaN/inf train/loss)  "
                f"({self.done}/{self.trials} trials done)",
                flush=True,
            )
            return
        print(
            f"[{self._clock()}] FAILED {self.name(trial, trials)}  ({self.done}/{self.trials}); "
            f"see {trial.local_path}/error.txt",
            flush=True,
        )

    def name(self, trial, trials=()) -> str:
        """The trial id, and with repeats its configuration and repeat: `1b312452 (config 2, repeat 2/3)`.

        Configurations are numbered from 1 in the order Tune created their first repeat (`trials` is
        Tune's list, in that order, restored trials included), so the numbers hold after --resume."""
        config = trial.config or {}
        cid = config.get(TAG_CONFIG)
        if cid is not None and cid not in self.numbers:
            for t in trials:
                self.numbers.setdefault((t.config or {}).get(TAG_CONFIG, t.trial_id), len(self.numbers) + 1)
        return trial_name(trial.trial_id, config, self.repeats, self.numbers.get(cid))

    def _clock(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"


def trial_name(trial_id: str, config: dict, repeats: int, number: int | None) -> str:
    """A trial's printed name: its id, and with repeats its configuration's number and its repeat."""
    if repeats <= 1 or TAG_CONFIG not in config:
        return trial_id
    return f"{trial_id} (config {number}, repeat {int(config.get(TAG_REPEAT, 0)) + 1}/{repeats})"


def _ended(trials, ending) -> int:
    """Trials done, counting those a resumed study finished before (Tune has not yet marked `ending`)."""
    return sum(t.status in ("TERMINATED", "ERROR") and t is not ending for t in trials) + 1


def _running(trials, ending) -> str:
    # Tune still counts the ending trial as RUNNING when it calls the callbacks.
    return f"{sum(t.status == 'RUNNING' and t is not ending for t in trials)} running"


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
