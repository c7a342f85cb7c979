"""Checks of a spec's sections that say what is wrong and change nothing: each appends its
problems (one line each, naming the YAML path and the fix) to `problems`.

    check_sampler(study, space, problems)   # e.g. "space.optim.lr.loguniform: the grid sampler needs ..."

study.spec.loading calls them while it builds the `Spec`; what a spec resolves (ASHA's rungs, the
checkpoint metric) is study.spec.resolve's.
"""

from __future__ import annotations

import math
from typing import Any

from study.space import FINITE, Param, enumerate_grid
from study.spec.model import LIMITS, Resources, StudySection, max_epochs
from trainables.config import ConfigError, Problem, TrialConfig, check_value


def shown(name: str) -> str:
    """A user's bad name, quoted and cut to a readable length."""
    return repr(name if len(name) <= 60 else name[:40] + "…" + name[-10:]) + (
        f" ({len(name)} characters)" if len(name) > 60 else ""
    )


def check_limit(path: str, value: Any, problems: list[str]) -> None:
    if isinstance(value, (int, float)) and value > LIMITS[path]:
        problems.append(f"{path}: {value} is more than {LIMITS[path]:,}, which can only be a typo")


def check_grace_period(study: StudySection, base: TrialConfig, space: dict[str, Param], problems: list[str]) -> None:
    """A grace_period set by hand must leave ASHA a rung to stop at (0 is resolved to a tenth of the epochs)."""
    sched = study.scheduler
    epochs = max_epochs(base, space)
    if (
        sched.early_stopping(len(study.objectives)) == "asha"
        and sched.grace_period != 0
        and sched.grace_period > epochs
    ):
        problems.append(
            f"study.scheduler.grace_period: {sched.grace_period} epochs is more than train.epochs "
            f"({epochs}); ASHA could never stop a trial: lower it, or set study.scheduler=none"
        )


def check_sampler(study: StudySection, space: dict[str, Param], problems: list[str]) -> None:
    if study.sampler != "grid":
        return
    infinite = [p for p in space.values() if p.kind not in FINITE]
    for p in infinite:
        problems.append(
            f"space.{p.path}.{p.kind}: the grid sampler needs finite distributions "
            f"({', '.join(FINITE)}); use choice or quniform, or another study.sampler"
        )
    if not infinite:
        try:
            enumerate_grid(space)
        except ValueError as e:
            problems.append(f"study.sampler: grid: {e}; narrow the int/quniform ranges or use tpe")


def check_resources(r: Resources, problems: list[str]) -> None:
    check_limit("resources.workers", r.workers, problems)
    if r.max_failures < -1:
        problems.append(f"resources.max_failures: -1 (no limit), 0 (no restart) or more, got {r.max_failures}")
    if r.workers < 1:
        problems.append(f"resources.workers: must be at least 1, got {r.workers}")
    if r.cpus_per_worker < 0 or r.gpus_per_worker < 0:
        problems.append("resources: cpus_per_worker and gpus_per_worker must be >= 0")
    if r.gpus_per_worker > 1 and r.gpus_per_worker != int(r.gpus_per_worker):
        problems.append(f"resources.gpus_per_worker: {r.gpus_per_worker:g} — above 1 it must be a whole number")
    if 0 < r.gpus_per_worker < 1 and r.workers > 1:
        problems.append(
            f"resources.gpus_per_worker: a fraction ({r.gpus_per_worker:g}) needs workers: 1; "
            f"each DDP worker of a {r.workers}-worker trial needs its own GPU"
        )
    if r.cpus_per_worker == 0 and r.gpus_per_worker == 0 and not r.custom:
        problems.append("resources: a worker must ask for some CPU, GPU or custom resource")


def check_param(path: str, kind: str, args: Any, t: type, where: str, problems: list[str]) -> Param | None:
    """One `space:` distribution's arguments, checked against the field's type `t` -> its Param, or None
    with the problem appended (as trainables.config.check_value does for one value)."""
    if kind == "choice":
        if not isinstance(args, list) or not args:
            problems.append(f"{where}: expected a non-empty list of values")
            return None
        values = []
        for i, v in enumerate(args):
            v, err = check_value(f"{where}[{i}]", v, t)
            if err:
                problems.append(err + f" (the type of {path})")
                return None
            v = list(v) if isinstance(v, tuple) else v
            if v in values:
                problems.append(f"{where}[{i}]: {v!r} is listed twice")
                return None
            values.append(v)
        return Param(path, kind, values)
    n = 3 if kind == "quniform" else 2
    shape = "[low, high, step]" if n == 3 else "[low, high]"
    if not isinstance(args, list) or len(args) != n:
        problems.append(f"{where}: expected {shape}, got {args!r}")
        return None
    want = int if kind == "int" or (kind == "quniform" and t is int) else float
    if t not in (float, int) or (want is float and t is int):
        problems.append(
            f"{where}: {path} is a {t.__name__ if isinstance(t, type) else t}; "
            f"{kind} needs a {'number' if want is int else 'float'} field"
        )
        return None
    for name, v in zip(("low", "high", "step"), args):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and not isinstance(v, int)):
            problems.append(f"{where}: {name} must be {'an integer' if want is int else 'a number'}, got {v!r}")
            return None
        if not math.isfinite(v):
            problems.append(f"{where}: bounds must be finite, got {args!r}")
            return None
    low, high = args[0], args[1]
    if low > high or (low == high and kind != "int"):
        problems.append(
            f"{where}: low {low} {'>' if low > high else '=='} high {high}; "
            + ("swap them" if low > high else "give a range, or fix the value in base:")
        )
        return None
    if kind == "loguniform" and low <= 0:
        problems.append(f"{where}: low must be > 0 for a log scale, got {low}")
        return None
    if kind == "quniform":
        step = args[2]
        if step <= 0:
            problems.append(f"{where}: step must be > 0, got {step}")
            return None
        n_steps = (high - low) / step
        if abs(n_steps - round(n_steps)) > 1e-9 * max(1.0, n_steps):
            problems.append(
                f"{where}: high - low = {high - low:g} is not a multiple of step {step:g}; "
                f"e.g. [{low}, {low + math.floor(n_steps) * step:g}, {step}]"
            )
            return None
        return Param(path, kind, [want(low), want(high), want(step)])
    return Param(path, kind, [want(low), want(high)])


def space_value_problems(base: TrialConfig, space: dict[str, Param]) -> list[str]:
    """Try each choice and each range end on the base config, with its conditions made true;
    report what it breaks that the base did not."""
    from trainables.registry import config_problems  # lazy for start-up time: torch takes ~3 s to import

    def problems_with(overrides: dict) -> set[str]:
        try:
            return set(config_problems(base.with_values(overrides)))
        except ConfigError as e:
            return set(e.problems)

    baseline = problems_with({})
    out = []
    for path, param in space.items():
        context = {other: allowed[0] for other, allowed in param.when.items()}
        before = problems_with(context) if context else baseline
        ends = param.args if param.kind == "choice" else param.args[:2]
        for value in ends:
            for p in sorted(problems_with({**context, path: value}) - before):
                p = Problem.of(p)
                where = f"space.{path}.{param.kind}"
                out.append(
                    Problem(where, f"{value!r}: {p.message}" if p.path == path else f"{value!r} breaks {p}", p.kind)
                )
    return out
