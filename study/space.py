"""A spec's `space:` as an Optuna define-by-run function.

Tune pickles the searcher with the experiment, so the sampler is a module-level class whose
instances hold only plain data.

    sample = SpaceSampler(spec.space)
    OptunaSearch(space=sample, metric="val/mre_mm", mode="min")
    sample(optuna_trial)   # {"optim.lr": 0.0012, "target.sigma": 2.7}
"""

from __future__ import annotations

import optuna

from study.spec import Param


class SpaceSampler:
    def __init__(self, space: dict[str, Param]):
        self.space = dict(space)

    def __call__(self, trial: optuna.Trial) -> None:
        # OptunaSearch reads the suggestions off the trial; returning None means "no constants".
        for p in self.space.values():
            suggest(trial, p)


def suggest(trial: optuna.Trial, p: Param):
    if p.kind == "choice":
        return trial.suggest_categorical(p.path, p.args)
    if p.kind == "uniform":
        return trial.suggest_float(p.path, p.args[0], p.args[1])
    if p.kind == "loguniform":
        return trial.suggest_float(p.path, p.args[0], p.args[1], log=True)
    if p.kind == "int":
        return trial.suggest_int(p.path, p.args[0], p.args[1])
    raise ValueError(f"unknown distribution {p.kind!r}")
