"""The spec as a model: the typed sections a YAML spec becomes (`Spec`, `StudySection`,
`StudyObjective`, `Scheduler`, `Resources`), the names and limits they allow, and the errors.

    spec.study.objectives[0]        # StudyObjective("val/mre_mm", "min")
    spec.trial_config(trial.config) # a trial's TrialConfig: the base with the sampled values

study.spec.loading builds it from YAML; study.spec.checks says what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from study.schema import TAG_CONFIG, TAG_REPEAT
from study.space import Param, enumerate_grid
from trainables.config import Problem, TrialConfig

SECTIONS = ("study", "resources", "base", "space")
SEED = "train.seed"  # varied per repeat of a configuration (study.repeats)
# Keys a trial's Tune config carries besides the trainer's fields: the configuration it repeats, and which repeat.
REPEAT_KEYS = (TAG_CONFIG, TAG_REPEAT)
SAMPLERS = ("tpe", "random", "grid", "nsga2")
SCHEDULERS = ("auto", "none", "asha")  # auto: asha for one objective, none for several
MODES = ("min", "max")
# Upper bounds where a larger number can only be a typo (a stray digit); the message says so.
LIMITS = {"study.trials": 100_000, "study.repeats": 100, "study.concurrency": 10_000, "resources.workers": 1024}
# study.name and study.experiment name a folder, an MLflow experiment and tag values in MLflow
# filter strings: a small safe set keeps them valid everywhere (no quotes, no path tricks).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"


def trainer_values(config: dict) -> dict:
    """A Tune trial's config without the repeat bookkeeping: only trainer fields (train.seed stays).

    trainer_values({"optim.lr": 1e-3, "config.id": "a_00000", "config.repeat": 1, "train.seed": 1})
    -> {"optim.lr": 1e-3, "train.seed": 1}
    """
    return {k: v for k, v in config.items() if k not in REPEAT_KEYS}


def max_epochs(base: TrialConfig, space: dict[str, Param]) -> int:
    """The most epochs any trial trains: train.epochs, or the largest value searched."""
    return int(space["train.epochs"].values()[-1]) if "train.epochs" in space else base.train.epochs


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
class StudyObjective:
    metric: str  # a reported metric name, e.g. val/mre_mm
    mode: str  # min | max


@dataclass
class Scheduler:
    type: str = "auto"  # auto | none | asha; auto becomes asha for one objective, none for several
    grace_period: int = 0  # epochs every trial runs before ASHA may stop it; 0 = a tenth of the epochs
    reduction_factor: float = 3.0  # ASHA keeps the best 1/reduction_factor at each rung
    max_t: int = 0  # the last rung, in epochs; set from train.epochs (the largest, if searched)

    def early_stopping(self, objectives: int) -> str:
        """What `type` comes to for a study of this many objectives: `auto` is asha for one, none for several."""
        if self.type != "auto":
            return self.type
        return "none" if objectives > 1 else "asha"


@dataclass
class StudySection:
    name: str
    objectives: list[StudyObjective] = field(default_factory=lambda: [StudyObjective("val/mre_mm", "min")])
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
    def primary(self) -> StudyObjective:
        return self.study.objectives[0]

    def describe_scheduler(self) -> str:
        s = self.study.scheduler
        if s.type != "asha":
            return "none"
        return (
            f"asha on {self.primary.metric} (grace_period {s.grace_period}, reduction_factor "
            f"{s.reduction_factor:g}, max_t {s.max_t} epochs)"
        )

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
        return max_epochs(self.base, self.space)

    def resolved(self) -> dict:
        """The spec after defaults and overrides, as plain data: what a resumed study compares."""
        return {
            "study": dataclasses.asdict(self.study),
            "resources": dataclasses.asdict(self.resources),
            "base": self.base.to_dict(),
            "space": {p.path: {p.kind: p.args, **({"when": p.when} if p.when else {})} for p in self.space.values()},
        }
