"""A study spec: YAML -> typed, validated `Spec`, with every problem reported at once.

    spec = load_spec("search_spaces/quickstart.yaml", overrides=["study.trials=8"])

The YAML has four sections:

    study:      name, objectives [{metric, mode}], trials, concurrency, sampler, seed, storage
    resources:  workers, cpus_per_worker, gpus_per_worker       (per trial)
    base:       a trial config (trainables.config.TrialConfig); omitted fields keep their defaults
    space:      dotted trial-config path -> {choice: [...]} | {uniform: [lo, hi]}
                | {loguniform: [lo, hi]} | {int: [lo, hi]}

Errors name the file and the YAML path, e.g.
    search_spaces/x.yaml: space.optim.lr.loguniform: low 0.1 > high 0.001; swap them
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainables.config import (
    ConfigError,
    TrialConfig,
    apply_overrides,
    check_value,
    field_type,
    leaf_paths,
    suggest,
)

SECTIONS = ("study", "resources", "base", "space")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
SAMPLERS = ("tpe", "random")
MODES = ("min", "max")


class SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads YAML 1.2 floats such as 1e-3 (YAML 1.1 makes them strings)."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 — a SafeLoader subclass


class SpecError(ValueError):
    """Everything wrong with a spec, one problem per line, each naming the file and YAML path."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = [f"{source}: {p}" for p in problems]
        super().__init__("\n".join(self.problems))


@dataclass
class Objective:
    metric: str  # a reported metric name, e.g. val/mre_mm
    mode: str  # min | max


@dataclass
class StudySection:
    name: str
    objectives: list[Objective] = field(default_factory=lambda: [Objective("val/mre_mm", "min")])
    trials: int = 8  # number of Optuna trials
    concurrency: int = 0  # trials at once; 0 = as many as the cluster's resources hold
    sampler: str = "tpe"  # tpe | random
    seed: int = 0  # sampler seed
    storage: str = "studies"  # folder for Tune/Train state and the default MLflow store


@dataclass
class Resources:
    workers: int = 1  # Ray Train workers per trial (DDP when > 1)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass
class Param:
    path: str  # dotted trial-config path
    kind: str  # one of DISTRIBUTIONS
    args: list  # choice: the values; others: [low, high]


@dataclass
class Spec:
    source: str  # the YAML file it came from
    study: StudySection
    resources: Resources
    base: dict  # the full trial config as a nested dict (defaults filled in)
    space: dict[str, Param]
    text: str = ""  # the YAML as written, for the record

    @property
    def storage_path(self) -> Path:
        return Path(self.study.storage).expanduser().resolve()

    @property
    def primary(self) -> Objective:
        return self.study.objectives[0]


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override (`--set a.b=value`), and validate a spec file. Raises SpecError."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise SpecError(source, ["no such spec file" + (" (it is a folder)" if p.is_dir() else "")])
    text = p.read_text()
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(source, [f"{where}invalid YAML: {getattr(e, 'problem', None) or e}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(source, [f"expected a mapping with sections {list(SECTIONS)}, got {type(raw).__name__}"])
    problems: list[str] = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected path=value, e.g. study.trials=8")
            continue
        try:
            raw = apply_overrides(raw, {key.strip(): parse_yaml(value)})
        except ConfigError as e:
            problems += [f"--set {p}" for p in e.problems]
    spec = _validate(raw, problems)
    if problems:
        raise SpecError(source, problems)
    spec.source, spec.text = source, text
    return spec


def _validate(raw: dict, problems: list[str]) -> Spec:
    for key in raw:
        if key not in SECTIONS:
            problems.append(f"{key}: unknown section{suggest(str(key), SECTIONS)}; valid sections: {', '.join(SECTIONS)}")
    study = _study(raw.get("study"), problems)
    resources = _resources(raw.get("resources") or {}, problems)
    base = _base(raw.get("base") or {}, problems)
    space = _space(raw.get("space") or {}, problems)
    problems += _space_value_problems(base, space)
    return Spec(source="", study=study, resources=resources, base=base, space=space)


def _section(d: Any, name: str, problems: list[str]) -> dict:
    if not isinstance(d, dict):
        problems.append(f"{name}: expected a mapping, got {d!r}")
        return {}
    return d


def _fields(d: dict, name: str, types: dict[str, type], problems: list[str]) -> dict:
    """Type-check the scalar keys of a section; unknown keys are reported with a suggestion."""
    out = {}
    for key, value in d.items():
        if key not in types:
            problems.append(f"{name}.{key}: unknown key{suggest(str(key), types)}; valid keys: {', '.join(types)}")
            continue
        value, err = check_value(f"{name}.{key}", value, types[key])
        if err:
            problems.append(err)
        else:
            out[key] = value
    return out


def _study(d: Any, problems: list[str]) -> StudySection:
    if d is None:
        problems.append("study: missing; it needs at least study.name")
        return StudySection(name="study")
    d = _section(d, "study", problems)
    scalar = {"name": str, "trials": int, "concurrency": int, "sampler": str, "seed": int, "storage": str}
    objectives_raw = d.get("objectives")
    values = _fields({k: v for k, v in d.items() if k != "objectives"}, "study", scalar, problems)
    if "name" not in values:
        if "name" not in d:
            problems.append("study.name: missing; the name keys the study's storage and MLflow experiment")
        values["name"] = "study"
    elif not values["name"] or "/" in values["name"] or values["name"].startswith("."):
        problems.append(f"study.name: {values['name']!r} must be a non-empty folder name without '/'")
    if values.get("trials", 1) < 1:
        problems.append(f"study.trials: must be at least 1, got {values['trials']}")
    if values.get("concurrency", 0) < 0:
        problems.append(f"study.concurrency: must be 0 (auto) or more, got {values['concurrency']}")
    if values.get("sampler", "tpe") not in SAMPLERS:
        problems.append(f"study.sampler: unknown {values['sampler']!r}; choose one of {list(SAMPLERS)}")
    study = StudySection(**values)
    if objectives_raw is not None:
        study.objectives = _objectives(objectives_raw, problems)
    return study


def _objectives(raw: Any, problems: list[str]) -> list[Objective]:
    from trainables.metrics import all_metric_names

    known = all_metric_names()
    if not isinstance(raw, list) or not raw:
        problems.append("study.objectives: expected a non-empty list of {metric: NAME, mode: min|max}")
        return [Objective("val/mre_mm", "min")]
    out = []
    for i, item in enumerate(raw):
        where = f"study.objectives[{i}]"
        if not isinstance(item, dict) or set(item) != {"metric", "mode"}:
            problems.append(f"{where}: expected {{metric: NAME, mode: min|max}}, got {item!r}")
            continue
        metric, mode = item["metric"], item["mode"]
        if metric not in known:
            problems.append(f"{where}.metric: {metric!r} is not reported by the trainer{suggest(str(metric), known)}; "
                            f"reported: {', '.join(known)}")
        if mode not in MODES:
            problems.append(f"{where}.mode: expected min or max, got {mode!r}")
        out.append(Objective(str(metric), str(mode)))
    if len(out) > 1:
        problems.append("study.objectives: several objectives (multi-objective search) are not supported yet; "
                        "give one")
    return out or [Objective("val/mre_mm", "min")]


def _resources(d: Any, problems: list[str]) -> Resources:
    d = _section(d, "resources", problems)
    values = _fields(d, "resources", {"workers": int, "cpus_per_worker": float, "gpus_per_worker": float}, problems)
    r = Resources(**values)
    if r.workers < 1:
        problems.append(f"resources.workers: must be at least 1, got {r.workers}")
    if r.cpus_per_worker < 0 or r.gpus_per_worker < 0:
        problems.append("resources: cpus_per_worker and gpus_per_worker must be >= 0")
    if r.gpus_per_worker > 1 and r.gpus_per_worker != int(r.gpus_per_worker):
        problems.append(f"resources.gpus_per_worker: {r.gpus_per_worker} — above 1 it must be a whole number")
    return r


def _base(d: Any, problems: list[str]) -> dict:
    from trainables.trainer import config_problems

    d = _section(d, "base", problems)
    data = d.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str) and data["root"]:
        # Trials run in their own working folders: make the data path absolute now.
        d = apply_overrides(d, {"data.root": str(Path(data["root"]).expanduser().resolve())})
    try:
        cfg = TrialConfig.from_dict(d, prefix="base.")
    except ConfigError as e:
        problems += e.problems
        return TrialConfig().to_dict()
    problems += [f"base.{p}" for p in config_problems(cfg)]
    return cfg.to_dict()


def _space(d: Any, problems: list[str]) -> dict[str, Param]:
    d = _section(d, "space", problems)
    out = {}
    for path, dist in d.items():
        where = f"space.{path}"
        t = field_type(str(path))
        if t is None:
            problems.append(f"{where}: no such trial-config field{suggest(str(path), leaf_paths())}")
            continue
        if not isinstance(t, type):
            problems.append(f"{where}: list-valued fields cannot be searched yet; fix {path} in base:")
            continue
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            problems.append(f"{where}: expected one of {{{' | '.join(f'{k}: ...' for k in DISTRIBUTIONS)}}}, got {dist!r}")
            continue
        kind, args = next(iter(dist.items()))
        param = _param(str(path), kind, args, t, f"{where}.{kind}", problems)
        if param:
            out[str(path)] = param
    return out


def _param(path: str, kind: str, args: Any, t: type, where: str, problems: list[str]) -> Param | None:
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
            values.append(list(v) if isinstance(v, tuple) else v)
        return Param(path, kind, values)
    if not isinstance(args, list) or len(args) != 2:
        problems.append(f"{where}: expected [low, high], got {args!r}")
        return None
    want = int if kind == "int" else float
    if t not in (float, int) or (want is float and t is int):
        problems.append(f"{where}: {path} is a {t.__name__ if isinstance(t, type) else t}; "
                        f"{kind} needs a {'number' if want is int else 'float'} field")
        return None
    low, high = args
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and not isinstance(v, int)):
            problems.append(f"{where}: {name} must be {'an integer' if want is int else 'a number'}, got {v!r}")
            return None
    if not (math.isfinite(low) and math.isfinite(high)):
        problems.append(f"{where}: bounds must be finite, got {args!r}")
        return None
    if low > high or (low == high and kind != "int"):
        problems.append(f"{where}: low {low} {'>' if low > high else '=='} high {high}; "
                        + ("swap them" if low > high else "give a range, or fix the value in base:"))
        return None
    if kind == "loguniform" and low <= 0:
        problems.append(f"{where}: low must be > 0 for a log scale, got {low}")
        return None
    return Param(path, kind, [want(low), want(high)])


def _space_value_problems(base: dict, space: dict[str, Param]) -> list[str]:
    """Try each choice and each range end on the base config; report what it breaks that base did not."""
    from trainables.trainer import config_problems

    def problems_with(overrides: dict) -> set[str]:
        try:
            return set(config_problems(TrialConfig.from_dict(apply_overrides(base, overrides))))
        except ConfigError as e:
            return set(e.problems)

    baseline = problems_with({})
    out = []
    for path, param in space.items():
        for value in param.args:
            for p in sorted(problems_with({path: value}) - baseline):
                own = p.startswith(f"{path}: ")
                out.append(f"space.{path}.{param.kind}: {value!r}" + (f": {p[len(path) + 2:]}" if own else f" breaks {p}"))
    return out
