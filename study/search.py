"""The search space as Optuna sees it: a define-by-run function, the distributions it samples
from, and the samplers a spec can name.

Tune pickles the searcher with the experiment, so the samplers here are module-level classes
whose instances hold only plain data.

    sample = SpaceSampler(spec.space)
    OptunaSearch(space=sample, metric=["val/mre_mm"], mode=["min"], sampler=make_sampler(spec))
    sample(optuna_trial)   # suggests {"target.schedule": "fixed", "target.sigma": 2.7}; adaloss
                           # trials get no target.sigma (its `when:` does not hold)
"""

from __future__ import annotations

import random
import threading
import warnings
from typing import TYPE_CHECKING

import optuna

from study.space import Param, active, enumerate_grid

if TYPE_CHECKING:  # make_sampler reads a Spec's study section; study.spec does not import this module
    from study.spec import Spec


class SpaceSampler:
    def __init__(self, space: dict[str, Param]):
        self.space = dict(space)  # in sampling order: conditions before the parameters they gate

    def __call__(self, trial: optuna.Trial) -> None:
        # OptunaSearch reads the suggestions off the trial; returning None means "no constants".
        values: dict = {}
        for p in self.space.values():
            if active(p, values):
                values[p.path] = suggest(trial, p)


def suggest(trial: optuna.Trial, p: Param):
    if p.kind == "choice":
        return trial.suggest_categorical(p.path, p.args)
    if p.kind == "uniform":
        return trial.suggest_float(p.path, p.args[0], p.args[1])
    if p.kind == "loguniform":
        return trial.suggest_float(p.path, p.args[0], p.args[1], log=True)
    if p.kind == "int":
        return trial.suggest_int(p.path, p.args[0], p.args[1])
    if p.kind == "quniform":
        low, high, step = p.args
        if isinstance(low, int):
            return trial.suggest_int(p.path, low, high, step=step)
        return trial.suggest_float(p.path, low, high, step=step)
    raise ValueError(f"unknown distribution {p.kind!r}")


def distribution(p: Param) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution `suggest` samples `p` from (the importance evaluators need it)."""
    d = optuna.distributions
    if p.kind == "choice":
        return d.CategoricalDistribution(p.args)
    if p.kind in ("uniform", "loguniform"):
        return d.FloatDistribution(p.args[0], p.args[1], log=p.kind == "loguniform")
    if p.kind == "int":
        return d.IntDistribution(p.args[0], p.args[1])
    if p.kind == "quniform":
        low, high, step = p.args
        cls = d.IntDistribution if isinstance(low, int) else d.FloatDistribution
        return cls(low, high, step=step)
    raise ValueError(f"unknown distribution {p.kind!r}")


class ConditionalGridSampler(optuna.samplers.BaseSampler):
    """Every point of a finite conditional space once, in a seeded shuffled order.

    Optuna's GridSampler cannot express `when:` (it would run each adaloss point once per unused
    σ), and GridSampler/BruteForceSampler end a study with `study.stop()`, which raises under the
    ask-and-tell interface Ray Tune drives. Trial n takes grid point n; the study runs exactly
    len(points) trials, so nothing needs stopping.
    """

    def __init__(self, space: dict[str, Param], seed: int = 0):
        self.points = enumerate_grid(space)
        random.Random(seed).shuffle(self.points)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        point = self.points[trial.number % len(self.points)]
        return point[param_name]


def make_sampler(spec: "Spec") -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by study.sampler, seeded with study.seed."""
    seed, name = spec.study.seed, spec.study.sampler
    if name == "tpe":
        # multivariate + group: TPE models parameters jointly, per group of co-occurring
        # (conditional) parameters, instead of each one on its own. Optuna marks both
        # experimental; their warning would print once per study and say nothing to the user.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, n_startup_trials=startup_trials(spec.study.trials)
            )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return ConditionalGridSampler(spec.space, seed)
    if name == "nsga2":
        return NSGAIISampler(seed=seed, population_size=population_size(spec.study.trials))
    raise ValueError(f"unknown sampler {name!r}")


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable again: Tune saves the searcher, sampler included, by pickling it, and
    Optuna 5.1 gave its genetic samplers a thread lock (samplers/_ga/_base.py), which pickle refuses.
    The lock guards a per-process cache only, so a new one is made on unpickling. The class keeps
    Optuna's name: the generation records Optuna keeps in the study are keyed by it."""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the history: Optuna's 10, fewer for a short study
    (a quarter of it, at least 2) so that TPE gets to act at all."""
    return max(2, min(10, trials // 4))


def population_size(trials: int) -> int:
    """NSGA-II's generation size: Optuna's 50 is more than most studies run, so take about a
    quarter of the trials (4 to 50), giving at least a few generations."""
    return max(4, min(50, trials // 4))
