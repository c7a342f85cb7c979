"""A study spec: YAML -> typed, validated `Spec`, with every problem reported at once.

    spec = load_spec("search_spaces/quickstart.yaml", overrides=["study.trials=8"])

The YAML has four sections:

    study:      name, objectives [{metric, mode}, ...], trials, repeats, concurrency, sampler,
                scheduler, seed, storage, experiment
    resources:  workers, cpus_per_worker, gpus_per_worker, custom   (per trial)
    base:       a trial config (trainables.config.TrialConfig); omitted fields keep their defaults
    space:      dotted trial-config path -> {choice: [...]} | {uniform: [lo, hi]}
                | {loguniform: [lo, hi]} | {int: [lo, hi]} | {quniform: [lo, hi, step]},
                each optionally with `when: {other.path: value or [values]}`

A `when:` names other searched `choice` parameters; the parameter is sampled only when all of
them hold (and keeps its base value otherwise):

    target.schedule: {choice: [fixed, adaloss]}
    target.sigma:    {uniform: [1.0, 6.0], when: {target.schedule: fixed}}

Errors name the file and the YAML path, e.g.
    search_spaces/x.yaml: space.optim.lr.loguniform: low 0.1 > high 0.001; swap them
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.schema import TAG_CONFIG, TAG_REPEAT
from study.space import DISTRIBUTIONS, FINITE, Param, enumerate_grid
from trainables.config import (
    ConfigError,
    Problem,
    TrialConfig,
    apply_overrides,
    check_value,
    field_type,
    leaf_paths,
    suggest,
)

SECTIONS = ("study", "resources", "base", "space")
SEED = "train.seed"  # varied per repeat of a configuration (study.repeats)
# Keys a trial's Tune config carries besides the trainer's fields: the configuration it repeats, and which repeat.
REPEAT_KEYS = (TAG_CONFIG, TAG_REPEAT)


def trainer_values(config: dict) -> dict:
    """A Tune trial's config without the repeat bookkeeping: only trainer fields (train.seed stays).

    trainer_values({"optim.lr": 1e-3, "config.id": "a_00000", "config.repeat": 1, "train.seed": 1})
    -> {"optim.lr": 1e-3, "train.seed": 1}
    """
    return {k: v for k, v in config.items() if k not in REPEAT_KEYS}
SAMPLERS = ("tpe", "random", "grid", "nsga2")
SCHEDULERS = ("auto", "none", "asha")  # auto: asha for one objective, none for several
MODES = ("min", "max")


class SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads YAML 1.2 floats such as 1e-3 (YAML 1.1 makes them strings)
    and records duplicate keys (YAML keeps the last silently; a spec must not)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except (yaml.YAMLError, TypeError):
                continue  # the base class reports unhashable keys
            if key in first:
                self.duplicates.append(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first at line "
                                       f"{first[key] + 1}); YAML would keep only the last: give it once")
            else:
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, duplicates: list[str] | None = None):
    """YAML text -> data, through the safe loader; duplicate keys are appended to `duplicates`."""
    loader = SpecLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if duplicates is not None:
        duplicates += loader.duplicates
    return data


# Upper bounds where a larger number can only be a typo (a stray digit); the message says so.
LIMITS = {"study.trials": 100_000, "study.repeats": 100, "study.concurrency": 10_000, "resources.workers": 1024}
# study.name and study.experiment name a folder, an MLflow experiment and tag values in MLflow
# filter strings: a small safe set keeps them valid everywhere (no quotes, no path tricks).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"


class SpecError(ValueError):
    """Everything wrong with a spec, one problem per line, each naming the file and YAML path.

    `found` holds the `Problem` values (YAML path, message, kind); `problems` the same under the
    file's name, as printed.
    """

    def __init__(self, source: str, problems: list[str]):
        self.found = [Problem.of(p) for p in problems]
        self.problems = [p.under(source) for p in self.found]
        super().__init__("\n".join(self.problems))


class StudyError(RuntimeError):
    """The study cannot start (exists already, nothing to resume, spec changed, storage unusable,
    no cluster at --address): one line for the user, exit 2."""


@dataclass
class Objective:
    metric: str  # a reported metric name, e.g. val/mre_mm
    mode: str  # min | max


@dataclass
class Scheduler:
    type: str = "auto"  # auto | none | asha; auto becomes asha for one objective, none for several
    grace_period: int = 0  # epochs every trial runs before ASHA may stop it; 0 = a tenth of the epochs
    reduction_factor: float = 3.0  # ASHA keeps the best 1/reduction_factor at each rung
    max_t: int = 0  # the last rung, in epochs; set from train.epochs (the largest, if searched)


@dataclass
class StudySection:
    name: str
    objectives: list[Objective] = field(default_factory=lambda: [Objective("val/mre_mm", "min")])
    trials: int = 8  # configurations Optuna samples (grid: capped at the number of grid points)
    # Each configuration is trained this many times, train.seed = base seed + repeat; each repeat is its
    # own Tune trial and MLflow run, and Optuna learns the mean (study.search.RepeatSearch).
    repeats: int = 1
    concurrency: int = 0  # trials at once; 0 = as many as the cluster's resources hold
    sampler: str = "tpe"  # tpe | random | grid | nsga2 (several objectives: tpe or nsga2 fit best)
    scheduler: Scheduler = field(default_factory=Scheduler)  # early stopping on the first objective
    seed: int = 0  # sampler seed
    storage: str = "studies"  # folder or URI for Tune/Train state (and the default MLflow store)
    experiment: str = ""  # MLflow experiment; "" = the study's name (several studies may share one)
    # Optuna's own record of the trials, for optuna-dashboard: "" = a journal file in the study folder
    # (local or NFS storage), an RDB URL (sqlite:///x.db, postgresql://...), or "none".
    optuna_storage: str = ""


@dataclass
class Resources:
    workers: int = 1  # Ray Train workers per trial (DDP when > 1)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # a fraction (0.5: two trials share a GPU) only with workers: 1
    custom: dict[str, float] = field(default_factory=dict)  # extra Ray resources per worker
    # A trial whose worker or node dies restarts from its latest checkpoint this many times
    # (then it is `failed`); -1 = without limit. Preempted nodes and OOM kills are ordinary on clusters.
    max_failures: int = 3

    def per_worker(self) -> dict[str, float]:
        """The Ray resource request of one Train worker."""
        out = {"CPU": self.cpus_per_worker, **self.custom}
        if self.gpus_per_worker > 0:
            out["GPU"] = self.gpus_per_worker
        return out


@dataclass
class Spec:
    source: str  # the YAML file it came from
    study: StudySection
    resources: Resources
    base: TrialConfig  # the validated trial config every trial starts from
    space: dict[str, Param]  # in sampling order: a parameter comes after those its `when:` names
    text: str = ""  # the YAML as written, for the record
    warnings: list[str] = field(default_factory=list)  # problems tolerated by check_data=False
    notes: list[str] = field(default_factory=list)  # Problem.NOTE: said, never refused (faces cut by the frame)

    @property
    def storage_path(self) -> Path:
        """The local storage folder (study.storage resolved; a file:// URI is a folder too)."""
        return Path(self.location).parent

    @property
    def location(self) -> str:
        """Where the study's state lives: `<storage>/<name>`, a local folder or a URI."""
        storage = self.study.storage
        if "://" in storage and not storage.startswith("file://"):
            return f"{storage.rstrip('/')}/{self.study.name}"
        return str(Path(storage.removeprefix("file://")).expanduser().resolve() / self.study.name)

    @property
    def primary(self) -> Objective:
        return self.study.objectives[0]

    def describe_scheduler(self) -> str:
        s = self.study.scheduler
        if s.type != "asha":
            return "none"
        return (f"asha on {self.primary.metric} (grace_period {s.grace_period}, reduction_factor "
                f"{s.reduction_factor:g}, max_t {s.max_t} epochs)")

    @property
    def multi_objective(self) -> bool:
        return len(self.study.objectives) > 1

    def grid(self) -> list[dict]:
        """Every point of a finite space (study.space.enumerate_grid)."""
        return enumerate_grid(self.space)

    def trial_config(self, sampled: dict) -> TrialConfig:
        """A trial's config: the base with the sampled dotted values (Tune's trial.config) set,
        and the repeat's train.seed (study.search.RepeatSearch sets it)."""
        return self.base.with_values({k: v for k, v in sampled.items() if k in self.space or k == SEED})

    @property
    def total_trials(self) -> int:
        """Tune trials in all: every configuration (study.trials, grid-capped) times study.repeats."""
        points = len(self.grid()) if self.study.sampler == "grid" else self.study.trials
        return min(self.study.trials, points) * self.study.repeats

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial trains: train.epochs, or the largest value searched."""
        return int(self.space["train.epochs"].values()[-1]) if "train.epochs" in self.space else self.base.train.epochs

    def resolved(self) -> dict:
        """The spec after defaults and overrides, as plain data: what a resumed study compares."""
        return {
            "study": dataclasses.asdict(self.study),
            "resources": dataclasses.asdict(self.resources),
            "base": self.base.to_dict(),
            "space": {p.path: {p.kind: p.args, **({"when": p.when} if p.when else {})} for p in self.space.values()},
        }


def load_spec(path: str | Path, overrides: list[str] | None = None, check_data: bool = True) -> Spec:
    """Read, override (`--set a.b=value`), and validate a spec file. Raises SpecError.

    check_data=False (the dry run) turns problems with files this machine lacks (the dataset,
    pretrained weights) into `spec.warnings`, so a full-size spec can be checked anywhere.
    Notes (Problem.NOTE, e.g. 300-W points outside their image) go to `spec.notes` in either mode.
    """
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise SpecError(source, ["no such spec file" + (" (it is a folder)" if p.is_dir() else "")])
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SpecError(source, [f"line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the spec as UTF-8"]) from None
    if "\x00" in text:
        raise SpecError(source, ["not a text file (it holds NUL bytes); a spec is YAML text"])
    duplicates: list[str] = []
    try:
        raw = parse_yaml(text, duplicates)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(source, [f"{where}invalid YAML: {yaml_problem(e)}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(source, [f"expected a mapping with sections {list(SECTIONS)}, got {type(raw).__name__}"])
    problems: list[str] = sorted(duplicates, key=lambda d: int(d.split(":")[0].split()[1]))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected path=value, e.g. study.trials=8")
            continue
        try:
            raw = apply_overrides(raw, {key.strip(): parse_yaml(value)})
        except ConfigError as e:
            problems += [f"--set {p}" for p in e.problems]
        except yaml.YAMLError as e:  # a tag (!!python/...) or broken YAML: never constructed
            why = yaml_problem(e).splitlines()[0]
            problems.append(f"--set {key.strip()}: {value!r} is not a plain YAML value ({why})")
    spec = _validate(raw, problems)
    spec.notes = [p for p in problems if Problem.of(p).kind == Problem.NOTE]
    problems = [p for p in problems if Problem.of(p).kind != Problem.NOTE]
    if not check_data:
        spec.warnings = [p for p in problems if Problem.of(p).kind == Problem.MISSING]
        problems = [p for p in problems if Problem.of(p).kind != Problem.MISSING]
    if problems:
        raise SpecError(source, problems)
    spec.source, spec.text = source, text
    spec.warnings = [Problem.of(w).under(source) for w in spec.warnings]
    spec.notes = [Problem.of(n).under(source) for n in spec.notes]
    return spec


def yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's problem, in words a spec's author can act on (the caller names the line and column).

    A tab is the common case: YAML allows only spaces for indentation and between a value and its
    comment, and PyYAML says "found character '\\t' that cannot start any token".
    """
    problem = getattr(e, "problem", None) or str(e)
    if "'\\t'" in problem:
        return ("a tab character, where YAML allows only spaces (indentation, or before a # comment); "
                "replace it with spaces")
    return problem


def _validate(raw: dict, problems: list[str]) -> Spec:
    for key in raw:
        if key not in SECTIONS:
            problems.append(f"{key}: unknown section{suggest(str(key), SECTIONS)}; valid sections: {', '.join(SECTIONS)}")
    study = _study(raw.get("study"), problems)
    resources = _resources(raw.get("resources") or {}, problems)
    base = _base(raw.get("base") or {}, problems)
    space = _space(raw.get("space") or {}, problems)
    problems += _space_value_problems(base, space)
    study.objectives = _objectives(raw.get("study"), base, space, problems)
    _check_scheduler(study, base, space, problems)
    _check_sampler(study, space, problems)
    _checkpoint_the_primary(study, base)
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
        if types[key] in (dict, list):  # sub-sections, checked by their own functions
            if value is not None and not isinstance(value, types[key]):
                problems.append(f"{name}.{key}: expected a {'mapping' if types[key] is dict else 'list'}, got {value!r}")
            else:
                out[key] = value
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
    scalar = {"name": str, "trials": int, "repeats": int, "concurrency": int, "sampler": str, "seed": int, "storage": str,
              "experiment": str, "optuna_storage": str}
    values = _fields({k: v for k, v in d.items() if k not in ("objectives", "scheduler")}, "study",
                     {**scalar, "objectives": list, "scheduler": dict}, problems)  # those two: below
    if "name" not in values:
        if "name" not in d:
            problems.append("study.name: missing; the name keys the study's storage and MLflow experiment")
        values["name"] = "study"
    elif not NAME.fullmatch(values["name"]):
        problems.append(f"study.name: {_shown(values['name'])} must be {NAME_RULE} (it names the study's folder "
                        f"and MLflow runs)")
        values["name"] = "study"
    if values.get("experiment") and not NAME.fullmatch(values["experiment"]):
        problems.append(f"study.experiment: {_shown(values['experiment'])} must be {NAME_RULE}, or empty for the "
                        f"study's name")
        values["experiment"] = ""
    for key in ("trials", "repeats", "concurrency"):
        _check_limit(f"study.{key}", values.get(key, 0), problems)
    if values.get("trials", 1) < 1:
        problems.append(f"study.trials: must be at least 1, got {values['trials']}")
    if values.get("repeats", 1) < 1:
        problems.append(f"study.repeats: must be at least 1 (trainings per configuration, each with its own "
                        f"train.seed), got {values['repeats']}")
    if values.get("concurrency", 0) < 0:
        problems.append(f"study.concurrency: must be 0 (auto) or more, got {values['concurrency']}")
    if values.get("sampler", "tpe") not in SAMPLERS:
        s = values["sampler"]
        problems.append(f"study.sampler: unknown {s!r}{suggest(s, SAMPLERS)}; choose one of {list(SAMPLERS)}")
    study = StudySection(**values)
    study.scheduler = _scheduler(d.get("scheduler", "auto"), problems)
    return study


def _shown(name: str) -> str:
    """A user's bad name, quoted and cut to a readable length."""
    return repr(name if len(name) <= 60 else name[:40] + "…" + name[-10:]) + (f" ({len(name)} characters)"
                                                                              if len(name) > 60 else "")


def _check_limit(path: str, value: Any, problems: list[str]) -> None:
    if isinstance(value, (int, float)) and value > LIMITS[path]:
        problems.append(f"{path}: {value} is more than {LIMITS[path]:,}, which can only be a typo")


def _scheduler(raw: Any, problems: list[str]) -> Scheduler:
    """`scheduler: asha`, or `scheduler: {type: asha, grace_period: 5, reduction_factor: 3}`."""
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        problems.append(f"study.scheduler: expected one of {list(SCHEDULERS)} or {{type: asha, grace_period: N, "
                        f"reduction_factor: F}}, got {raw!r}")
        return Scheduler()
    values = _fields(raw, "study.scheduler", {"type": str, "grace_period": int, "reduction_factor": float}, problems)
    sched = Scheduler(**values)
    if sched.type not in SCHEDULERS:
        problems.append(f"study.scheduler.type: unknown {sched.type!r}{suggest(sched.type, SCHEDULERS)}; "
                        f"choose one of {list(SCHEDULERS)}")
    if sched.grace_period < 0:
        problems.append(f"study.scheduler.grace_period: must be ≥ 1 epoch (0 = a tenth of the epochs), "
                        f"got {sched.grace_period}")
    if not sched.reduction_factor > 1:
        problems.append(f"study.scheduler.reduction_factor: must be > 1, got {sched.reduction_factor:g}")
    return sched


def _objectives(study_raw: Any, base: TrialConfig, space: dict[str, Param], problems: list[str]) -> list[Objective]:
    """study.objectives, checked against what the trainer reports for the base dataset."""
    from trainables.data import DATASETS  # lazy for start-up time, as in _base
    from trainables.metrics import all_metric_names, reported_metrics

    raw = study_raw.get("objectives") if isinstance(study_raw, dict) else None
    if raw is None:
        raw = [{"metric": "val/mre_mm", "mode": "min"}]
    dataset = base.data.dataset
    if "data.dataset" in space or dataset not in DATASETS:
        known, reporter = all_metric_names(), "the trainer"
    else:
        unit = DATASETS[dataset].unit
        known, reporter = reported_metrics(unit), f"the trainer for data.dataset {dataset} (scored in {unit})"
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
            problems.append(f"{where}.metric: {metric!r} is not reported by {reporter}"
                            f"{suggest(str(metric), known)}; reported: {', '.join(known)}")
        elif metric in [o.metric for o in out]:
            problems.append(f"{where}.metric: {metric!r} is already an objective; give each metric once")
        if mode not in MODES:
            problems.append(f"{where}.mode: expected min or max, got {mode!r}")
        out.append(Objective(str(metric), str(mode)))
    return out or [Objective("val/mre_mm", "min")]


def _check_scheduler(study: StudySection, base: TrialConfig, space: dict[str, Param], problems: list[str]) -> None:
    """Resolve `auto` and ASHA's rungs, which are counted in epochs."""
    sched = study.scheduler
    if sched.type == "auto":
        sched.type = "none" if len(study.objectives) > 1 else "asha"
    if sched.type != "asha":
        return
    epochs = space["train.epochs"].values()[-1] if "train.epochs" in space else base.train.epochs
    sched.max_t = int(epochs)
    if sched.grace_period == 0:
        sched.grace_period = max(1, sched.max_t // 10)
    elif sched.grace_period > sched.max_t:
        problems.append(f"study.scheduler.grace_period: {sched.grace_period} epochs is more than train.epochs "
                        f"({sched.max_t}); ASHA could never stop a trial: lower it, or set study.scheduler=none")


def _checkpoint_the_primary(study: StudySection, base: TrialConfig) -> None:
    """The trainer also checkpoints each epoch that improves the study's primary objective, so the
    best epoch is always among the checkpoints Train keeps (the trial's MLflow run logs its weights
    and pictures). Set here, on the base, so that MLflow's params show what the trainer used."""
    primary = study.objectives[0]
    if not base.train.checkpoint_metric and primary.metric.startswith(("val/", "train/", "cost/")):
        base.train.checkpoint_metric, base.train.checkpoint_mode = primary.metric, primary.mode


def _check_sampler(study: StudySection, space: dict[str, Param], problems: list[str]) -> None:
    if study.sampler != "grid":
        return
    infinite = [p for p in space.values() if p.kind not in FINITE]
    for p in infinite:
        problems.append(f"space.{p.path}.{p.kind}: the grid sampler needs finite distributions "
                        f"({', '.join(FINITE)}); use choice or quniform, or another study.sampler")
    if not infinite:
        try:
            enumerate_grid(space)
        except ValueError as e:
            problems.append(f"study.sampler: grid: {e}; narrow the int/quniform ranges or use tpe")


def _resources(d: Any, problems: list[str]) -> Resources:
    d = _section(d, "resources", problems)
    values = _fields(d, "resources", {"workers": int, "cpus_per_worker": float, "gpus_per_worker": float,
                                      "custom": dict, "max_failures": int}, problems)
    custom = {}
    for name, amount in (values.pop("custom", None) or {}).items():
        amount, err = check_value(f"resources.custom.{name}", amount, float)
        if err:
            problems.append(err)
        elif name in ("CPU", "GPU"):
            problems.append(f"resources.custom.{name}: set it with {name.lower()}s_per_worker")
        elif amount <= 0:
            problems.append(f"resources.custom.{name}: must be > 0, got {amount:g}")
        else:
            custom[str(name)] = amount
    r = Resources(**values, custom=custom)
    _check_limit("resources.workers", r.workers, problems)
    if r.max_failures < -1:
        problems.append(f"resources.max_failures: -1 (no limit), 0 (no restart) or more, got {r.max_failures}")
    if r.workers < 1:
        problems.append(f"resources.workers: must be at least 1, got {r.workers}")
    if r.cpus_per_worker < 0 or r.gpus_per_worker < 0:
        problems.append("resources: cpus_per_worker and gpus_per_worker must be >= 0")
    if r.gpus_per_worker > 1 and r.gpus_per_worker != int(r.gpus_per_worker):
        problems.append(f"resources.gpus_per_worker: {r.gpus_per_worker:g} — above 1 it must be a whole number")
    if 0 < r.gpus_per_worker < 1 and r.workers > 1:
        problems.append(f"resources.gpus_per_worker: a fraction ({r.gpus_per_worker:g}) needs workers: 1; "
                        f"each DDP worker of a {r.workers}-worker trial needs its own GPU")
    if r.cpus_per_worker == 0 and r.gpus_per_worker == 0 and not r.custom:
        problems.append("resources: a worker must ask for some CPU, GPU or custom resource")
    return r


def _base(d: Any, problems: list[str]) -> TrialConfig:
    from trainables.registry import config_problems  # lazy for start-up time: torch takes ~3 s to import

    d = _section(d, "base", problems)
    # Trials run in their own working folders: make the data and weights paths absolute now.
    for path, keep in (("data.root", ("",)), ("model.weights", ("", "none", "imagenet")), ("distill.teacher", ("",))):
        section, _, key = path.partition(".")
        value = d.get(section, {}).get(key) if isinstance(d.get(section), dict) else None
        if isinstance(value, str) and value not in keep:
            d = apply_overrides(d, {path: str(Path(value).expanduser().resolve())})
    try:
        cfg = TrialConfig.from_dict(d, prefix="base.")
    except ConfigError as e:
        problems += e.problems
        return TrialConfig()
    notes: list[Problem] = []  # kept among the problems as Problem.NOTE; load_spec moves them to spec.notes
    problems += [p.prefixed("base.") for p in config_problems(cfg, notes) + notes]
    return cfg


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
        kinds = [k for k in dist if k in DISTRIBUTIONS] if isinstance(dist, dict) else []
        if len(kinds) != 1:
            problems.append(f"{where}: expected one of {{{' | '.join(f'{k}: ...' for k in DISTRIBUTIONS)}}} "
                            f"(and optionally when: ...), got {dist!r}")
            continue
        extra = [k for k in dist if k not in (*DISTRIBUTIONS, "when")]
        for k in extra:
            problems.append(f"{where}.{k}: unknown key{suggest(str(k), ('when',))}; a parameter takes one "
                            f"distribution and optionally when:")
        kind = kinds[0]
        param = _param(str(path), kind, dist[kind], t, f"{where}.{kind}", problems)
        if param and not extra:
            param.when = dist.get("when") or {}
            out[str(path)] = param
    return _conditions(out, problems)


def _conditions(space: dict[str, Param], problems: list[str]) -> dict[str, Param]:
    """Check every `when:` and return the space in sampling order (conditions before what they gate)."""
    for p in list(space.values()):
        where = f"space.{p.path}.when"
        if not isinstance(p.when, dict):
            problems.append(f"{where}: expected a mapping {{other.path: value or [values]}}, got {p.when!r}")
            del space[p.path]
            continue
        when = {}
        for other, allowed in p.when.items():
            other = str(other)
            at = f"{where}.{other}"
            cond = space.get(other)
            if other == p.path:
                problems.append(f"{at}: a parameter cannot be conditioned on itself")
            elif cond is None:
                hint = " (it is fixed in base:)" if field_type(other) else suggest(other, space)
                problems.append(f"{at}: {other} is not searched{hint}; a condition must name a `choice` "
                                f"parameter in space:")
            elif cond.kind != "choice":
                problems.append(f"{at}: {other} is a {cond.kind} range; conditions need a `choice` parameter")
            else:
                values = []
                for v in allowed if isinstance(allowed, list) else [allowed]:
                    v, err = check_value(at, v, field_type(other))
                    if err:
                        problems.append(err)
                    elif v not in cond.args:
                        problems.append(f"{at}: {v!r} is never sampled; {other} chooses from {cond.args}")
                    else:
                        values.append(v)
                if values:
                    when[other] = values
                continue
        if len(when) != len(p.when):
            del space[p.path]
        else:
            p.when = when
    return _sampling_order(space, problems)


def _sampling_order(space: dict[str, Param], problems: list[str]) -> dict[str, Param]:
    ordered: dict[str, Param] = {}
    failed: set[str] = set()
    visiting: list[str] = []

    def visit(path: str) -> None:
        if path in ordered or path in failed:
            return
        if path in visiting:
            cycle = visiting[visiting.index(path):] + [path]
            problems.append(f"space.{path}.when: the conditions form a cycle: {' -> '.join(cycle)}")
            failed.update(cycle)
            return
        visiting.append(path)
        for other in space[path].when:
            visit(other)
        visiting.pop()
        if path not in failed and not failed & set(space[path].when):
            ordered[path] = space[path]

    for path in space:
        visit(path)
    return ordered


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
        problems.append(f"{where}: {path} is a {t.__name__ if isinstance(t, type) else t}; "
                        f"{kind} needs a {'number' if want is int else 'float'} field")
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
        problems.append(f"{where}: low {low} {'>' if low > high else '=='} high {high}; "
                        + ("swap them" if low > high else "give a range, or fix the value in base:"))
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
            problems.append(f"{where}: high - low = {high - low:g} is not a multiple of step {step:g}; "
                            f"e.g. [{low}, {low + math.floor(n_steps) * step:g}, {step}]")
            return None
        return Param(path, kind, [want(low), want(high), want(step)])
    return Param(path, kind, [want(low), want(high)])


def _space_value_problems(base: TrialConfig, space: dict[str, Param]) -> list[str]:
    """Try each choice and each range end on the base config, with its conditions made true;
    report what it breaks that the base did not."""
    from trainables.registry import config_problems  # lazy for start-up time, as in _base

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
                out.append(Problem(where, f"{value!r}: {p.message}" if p.path == path else f"{value!r} breaks {p}", p.kind))
    return out


