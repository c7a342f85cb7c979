"""Repeated seeds (study.repeats): each sampled configuration is trained n times, each repeat its
own Tune trial (and MLflow run); Optuna learns each configuration's mean, and ASHA compares
configurations on the mean of their repeats.

    search = RepeatSearch(OptunaSearch(...), repeats=3, base_seed=0, metrics=["val/mre_mm"])
    search.suggest("a_00000")   # Optuna samples {"optim.lr": 1e-3, ...}; the config it returns adds
                                # config.id "a_00000", config.repeat 0, train.seed 0
    search.suggest("a_00001")   # the same configuration: config.id "a_00000", repeat 1, seed 1
    scheduler = RepeatASHA(time_attr="epoch", metric="val/mre_mm", mode="min", max_t=10, grace_period=3)

A configuration's id is the Tune trial id of its first repeat (also when repeats is 1: every
trial is then its own configuration, repeat 0), and repeat k trains with the base train.seed + k.
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import numpy as np
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket
from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

from study.schema import TAG_CONFIG, TAG_REPEAT
from study.spec import SEED


class RepeatSearch(Searcher):
    """Hands each configuration the wrapped searcher samples out `repeats` times, and tells the
    searcher the MEAN of each objective over the repeats that ended with values, once all of them
    have ended.

    Why the mean and not each repeat: TPE splits the history at a quantile of the objective and
    models the good and the bad parameters; NSGA-II ranks by non-domination. Both compare
    configurations, and a single seed's value is that configuration's value plus seed noise; the
    mean of n repeats has 1/n of the noise variance, so the comparison the sampler makes is the
    one the user wants. Telling each repeat as its own Optuna trial would count a configuration n
    times in TPE's density estimates and fill NSGA-II's population with copies of one point, and
    Optuna would not have proposed those copies itself.

    Failed and diverged repeats are left out of the mean (the comparison shows them as counted);
    when no repeat ended with values the configuration is told as failed (an error among them)
    or pruned, as a single trial is today. Per-epoch results of the first repeat go to the
    searcher as intermediate values (Optuna's record; nothing prunes on them).

    Its state is plain data (get_state/set_state, saved by Tune with the experiment): a group half
    handed out before a kill is completed after `--resume`, with no repeat handed out twice.
    """

    def __init__(self, searcher: Searcher, repeats: int, base_seed: int, metrics: list[str]):
        self.searcher = searcher
        self.repeats = repeats
        self.base_seed = base_seed
        self.metrics = list(metrics)
        # config id -> {"config": sampled values, "trials": [trial ids, by repeat],
        #               "values": {trial id: [objective values] or None}, "errors": int, "told": bool}
        self.groups: dict[str, dict] = {}
        self.trial_group: dict[str, str] = {}  # trial id -> config id
        self.open: Optional[str] = None  # the configuration whose repeats are still being handed out
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        return _set_search_properties_backwards_compatible(
            self.searcher.set_search_properties, metric, mode, config, **spec
        )

    def suggest(self, trial_id: str) -> Optional[dict]:
        group = self.groups.get(self.open) if self.open else None
        if group is None or len(group["trials"]) >= self.repeats:
            config = self.searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            group = {"config": copy.deepcopy(config), "trials": [], "values": {}, "errors": 0, "told": False}
            self.groups[trial_id] = group
            self.open = trial_id
        repeat = len(group["trials"])
        group["trials"].append(trial_id)
        self.trial_group[trial_id] = self.open
        config = copy.deepcopy(group["config"])
        # train.seed may itself be searched: repeats then vary around the sampled seed
        return {
            **config,
            TAG_CONFIG: self.open,
            TAG_REPEAT: repeat,
            SEED: int(config.get(SEED, self.base_seed)) + repeat,
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.trial_group.get(trial_id) == trial_id:  # the first repeat: the Optuna trial's own id
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        cid = self.trial_group.get(trial_id)
        if cid is None:
            return  # not one of ours (cannot happen unless Tune replays a trial it never asked for)
        group = self.groups[cid]
        if trial_id in group["values"] or group["told"]:
            return  # Tune reported this repeat's end before
        values = [result.get(m) for m in self.metrics] if result and not error else None
        if values is not None and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            values = None
        group["values"][trial_id] = values
        group["errors"] += bool(error)
        if len(group["values"]) < self.repeats:
            return
        group["told"] = True
        valued = [v for v in group["values"].values() if v is not None]
        if valued:
            means = {m: float(np.mean([v[i] for v in valued])) for i, m in enumerate(self.metrics)}
            self.searcher.on_trial_complete(cid, result=means, error=False)
        else:
            self.searcher.on_trial_complete(cid, result=None, error=group["errors"] > 0)

    def get_state(self) -> dict:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "searcher"})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(copy.deepcopy(state))

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def config_id(trial) -> str:
    """The configuration a Tune trial repeats (its own id when it carries none: repeats 1, old studies)."""
    return (trial.config or {}).get(TAG_CONFIG, trial.trial_id)


class _ConfigBracket(_Bracket):
    """ASHA's bracket with configurations, not trials, as the things compared at each rung.

    At a rung, a repeat's value joins its configuration's record there; the configuration's value
    at the rung is the mean of the repeats that reached it so far, and the repeat stops when that
    mean is below the cutoff ASHA computes over the other configurations' means (the top
    1/reduction_factor continue). A configuration stopped at a rung is stopped for good: each of
    its other repeats stops once it has reached that rung (at its next result if it is past it;
    RepeatASHA.on_trial_result), so all of them train at least up to the rung.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.values: list[dict[str, dict[str, float]]] = [{} for _ in self._rungs]  # rung -> config -> trial -> value
        self.stopped: dict[str, float] = {}  # config id -> the rung (epochs) it was stopped at

    def on_result(self, trial, cur_iter, cur_rew) -> str:
        cid = config_id(trial)
        for (milestone, recorded), values in zip(self._rungs, self.values):
            if cur_iter < milestone or trial.trial_id in values.get(cid, {}):
                continue
            if cur_rew is None:  # ASHA's own rule: no value, no decision
                return TrialScheduler.CONTINUE
            others = [float(np.nanmean(list(v.values()))) for c, v in values.items() if c != cid and v]
            cutoff = np.nanpercentile(others, (1 - 1 / self.rf) * 100) if others else None
            mine = values.setdefault(cid, {})
            mine[trial.trial_id] = cur_rew
            mean = float(np.nanmean(list(mine.values())))
            recorded[cid] = mean  # what debug_str shows: the configurations' means
            if milestone >= self.stopped.get(cid, math.inf) or (cutoff is not None and mean < cutoff):
                self.stopped[cid] = min(milestone, self.stopped.get(cid, milestone))
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE


class RepeatASHA(ASHAScheduler):
    """ASHA (one bracket) that compares configurations on the mean of their repeats at each rung
    (_ConfigBracket); with one repeat per configuration it decides as ASHA does."""

    def __init__(self, time_attr: str, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float):
        super().__init__(
            time_attr=time_attr,
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=1,
        )
        self._brackets = [_ConfigBracket(grace_period, max_t, reduction_factor, 0)]

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        rung = self._brackets[0].stopped.get(config_id(trial))
        if rung is not None and result.get(self._time_attr, -1) >= rung and self._metric in result:
            self._num_stopped += 1  # its configuration was stopped at a rung this repeat has now reached
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)
