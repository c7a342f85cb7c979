"""Loading a study spec: YAML -> typed, validated `Spec`, with every problem reported at once.

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

import re
from pathlib import Path
from typing import Any

import yaml

from study.space import DISTRIBUTIONS, Param
from study.spec.checks import (
    check_grace_period,
    check_limit,
    check_param,
    check_resources,
    check_sampler,
    shown,
    space_value_problems,
)
from study.spec.model import (
    MODES,
    NAME,
    NAME_RULE,
    SAMPLERS,
    SCHEDULERS,
    SECTIONS,
    Resources,
    Scheduler,
    Spec,
    SpecError,
    StudyObjective,
    StudySection,
)
from study.spec.resolve import resolve_checkpoint_metric, resolve_scheduler
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
                self.duplicates.append(
                    f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first at line "
                    f"{first[key] + 1}); YAML would keep only the last: give it once"
                )
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
        line = data[: e.start].count(b"\n") + 1
        raise SpecError(
            source, [f"line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the spec as UTF-8"]
        ) from None
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
    spec = _build(raw, problems)
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
        return (
            "a tab character, where YAML allows only spaces (indentation, or before a # comment); "
            "replace it with spaces"
        )
    return problem


def _build(raw: dict, problems: list[str]) -> Spec:
    """The sections, parsed and checked (problems appended), then what they leave to resolve."""
    for key in raw:
        if key not in SECTIONS:
            problems.append(
                f"{key}: unknown section{suggest(str(key), SECTIONS)}; valid sections: {', '.join(SECTIONS)}"
            )
    study = _study(raw.get("study"), problems)
    resources = _resources(raw.get("resources") or {}, problems)
    base = _base(raw.get("base") or {}, problems)
    space = _space(raw.get("space") or {}, problems)
    problems += space_value_problems(base, space)
    study.objectives = _objectives(raw.get("study"), base, space, problems)
    check_grace_period(study, base, space, problems)
    check_sampler(study, space, problems)
    resolve_scheduler(study, base, space)
    resolve_checkpoint_metric(study, base)
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
                problems.append(
                    f"{name}.{key}: expected a {'mapping' if types[key] is dict else 'list'}, got {value!r}"
                )
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
    scalar = {
        "name": str,
        "trials": int,
        "repeats": int,
        "concurrency": int,
        "sampler": str,
        "seed": int,
        "storage": str,
        "experiment": str,
        "optuna_storage": str,
    }
    values = _fields(
        {k: v for k, v in d.items() if k not in ("objectives", "scheduler")},
        "study",
        {**scalar, "objectives": list, "scheduler": dict},
        problems,
    )  # those two: below
    if "name" not in values:
        if "name" not in d:
            problems.append("study.name: missing; the name keys the study's storage and MLflow experiment")
        values["name"] = "study"
    elif not NAME.fullmatch(values["name"]):
        problems.append(
            f"study.name: {shown(values['name'])} must be {NAME_RULE} (it names the study's folder and MLflow runs)"
        )
        values["name"] = "study"
    if values.get("experiment") and not NAME.fullmatch(values["experiment"]):
        problems.append(
            f"study.experiment: {shown(values['experiment'])} must be {NAME_RULE}, or empty for the study's name"
        )
        values["experiment"] = ""
    for key in ("trials", "repeats", "concurrency"):
        check_limit(f"study.{key}", values.get(key, 0), problems)
    if values.get("trials", 1) < 1:
        problems.append(f"study.trials: must be at least 1, got {values['trials']}")
    if values.get("repeats", 1) < 1:
        problems.append(
            f"study.repeats: must be at least 1 (trainings per configuration, each with its own "
            f"train.seed), got {values['repeats']}"
        )
    if values.get("concurrency", 0) < 0:
        problems.append(f"study.concurrency: must be 0 (auto) or more, got {values['concurrency']}")
    if values.get("sampler", "tpe") not in SAMPLERS:
        s = values["sampler"]
        problems.append(f"study.sampler: unknown {s!r}{suggest(s, SAMPLERS)}; choose one of {list(SAMPLERS)}")
    study = StudySection(**values)
    study.scheduler = _parse_scheduler(d.get("scheduler", "auto"), problems)
    return study


def _parse_scheduler(raw: Any, problems: list[str]) -> Scheduler:
    """`scheduler: asha`, or `scheduler: {type: asha, grace_period: 5, reduction_factor: 3}`."""
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        problems.append(
            f"study.scheduler: expected one of {list(SCHEDULERS)} or {{type: asha, grace_period: N, "
            f"reduction_factor: F}}, got {raw!r}"
        )
        return Scheduler()
    values = _fields(raw, "study.scheduler", {"type": str, "grace_period": int, "reduction_factor": float}, problems)
    sched = Scheduler(**values)
    if sched.type not in SCHEDULERS:
        problems.append(
            f"study.scheduler.type: unknown {sched.type!r}{suggest(sched.type, SCHEDULERS)}; "
            f"choose one of {list(SCHEDULERS)}"
        )
    if sched.grace_period < 0:
        problems.append(
            f"study.scheduler.grace_period: must be ≥ 1 epoch (0 = a tenth of the epochs), got {sched.grace_period}"
        )
    if not sched.reduction_factor > 1:
        problems.append(f"study.scheduler.reduction_factor: must be > 1, got {sched.reduction_factor:g}")
    return sched


def _objectives(
    study_raw: Any, base: TrialConfig, space: dict[str, Param], problems: list[str]
) -> list[StudyObjective]:
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
        return [StudyObjective("val/mre_mm", "min")]
    out = []
    for i, item in enumerate(raw):
        where = f"study.objectives[{i}]"
        if not isinstance(item, dict) or set(item) != {"metric", "mode"}:
            problems.append(f"{where}: expected {{metric: NAME, mode: min|max}}, got {item!r}")
            continue
        metric, mode = item["metric"], item["mode"]
        if metric not in known:
            problems.append(
                f"{where}.metric: {metric!r} is not reported by {reporter}"
                f"{suggest(str(metric), known)}; reported: {', '.join(known)}"
            )
        elif metric in [o.metric for o in out]:
            problems.append(f"{where}.metric: {metric!r} is already an objective; give each metric once")
        if mode not in MODES:
            problems.append(f"{where}.mode: expected min or max, got {mode!r}")
        out.append(StudyObjective(str(metric), str(mode)))
    return out or [StudyObjective("val/mre_mm", "min")]


def _resources(d: Any, problems: list[str]) -> Resources:
    d = _section(d, "resources", problems)
    values = _fields(
        d,
        "resources",
        {"workers": int, "cpus_per_worker": float, "gpus_per_worker": float, "custom": dict, "max_failures": int},
        problems,
    )
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
    check_resources(r, problems)
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
            problems.append(
                f"{where}: expected one of {{{' | '.join(f'{k}: ...' for k in DISTRIBUTIONS)}}} "
                f"(and optionally when: ...), got {dist!r}"
            )
            continue
        extra = [k for k in dist if k not in (*DISTRIBUTIONS, "when")]
        for k in extra:
            problems.append(
                f"{where}.{k}: unknown key{suggest(str(k), ('when',))}; a parameter takes one "
                f"distribution and optionally when:"
            )
        kind = kinds[0]
        param = check_param(str(path), kind, dist[kind], t, f"{where}.{kind}", problems)
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
                problems.append(
                    f"{at}: {other} is not searched{hint}; a condition must name a `choice` parameter in space:"
                )
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
            cycle = visiting[visiting.index(path) :] + [path]
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
