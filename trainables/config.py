"""The trial config: one typed tree, and the only vocabulary of the project.

A spec's `base:` fills it, a spec's `space:` names its fields by dotted path
(`target.sigma`, `optim.lr`), MLflow params and plot labels use the same paths.

    >>> cfg = TrialConfig.from_dict({"optim": {"lr": 3e-4}, "train": {"epochs": 2}})
    >>> flatten(cfg)["optim.lr"]
    0.0003
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import keyword
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from trainables.data.phantom import PhantomConfig
from trainables.problems import Problem


class ConfigError(ValueError):
    """One or more problems with a config; each names its dotted path."""

    def __init__(self, problems: list[str]):
        self.problems = [Problem.of(p) for p in problems]
        super().__init__("\n".join(self.problems))


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: an outcome of the recipe, not a crash."""


@dataclass
class AugmentConfig:
    """data.augment: applied to training batches by trainables.data.augment; all 0 = off."""

    flip: float = 0.0  # probability of a horizontal flip (landmarks re-indexed by the dataset's flip map)
    scale: float = 0.0  # scale factor drawn from U(1 - scale, 1 + scale)
    rotate: float = 0.0  # rotation in degrees drawn from U(-rotate, rotate)
    translate: float = 0.0  # shift drawn from U(-translate, translate) × (W, H)
    intensity: float = 0.0  # x·c + b, c ~ U(1 - i, 1 + i), b ~ U(-i, i), in normalised units


# field -> (low, high, high inclusive?); high None = unbounded.
_AUGMENT_RANGES = {
    "flip": (0.0, 1.0, True),
    "scale": (0.0, 1.0, False),
    "rotate": (0.0, 180.0, True),
    "translate": (0.0, 1.0, False),
    "intensity": (0.0, None, False),
}


def augment_problems(cfg: AugmentConfig, prefix: str = "data.augment.") -> list[str]:
    """Problems with cfg, each naming its dotted path; [] when fine."""
    out = []
    for name, (lo, hi, closed) in _AUGMENT_RANGES.items():
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            out.append(f"{prefix}{name}: expected a number, got {v!r}")
            continue
        ok = lo <= v and (hi is None or (v <= hi if closed else v < hi))  # False for NaN
        if not ok:
            want = f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}{']' if closed else ')'}"
            out.append(f"{prefix}{name}: must be {want}, got {v!r}; 0 turns it off")
    return out


def is_active(cfg: AugmentConfig) -> bool:
    """True when any augmentation is switched on."""
    return any(getattr(cfg, f.name) != 0 for f in fields(cfg))


@dataclass
class ModelConfig:
    name: str = "unet"  # registry trainables.models.MODELS: unet | farnet | simple_baseline
    backbone: str = "resnet18"  # farnet, simple_baseline: registry trainables.models.backbones.BACKBONES
    weights: str = "none"  # none | imagenet (from the local torch hub cache) | path to a state dict
    width: float = 1.0  # decoder channel multiplier; 1.0 = the paper's network (unet: 32·width channels)
    fusion: str = "concat"  # farnet MSFA fusion: concat | add (Table 2's MSFA(+))
    refine: bool = True  # farnet: the full-resolution FR module
    coarse_supervision: bool = True  # farnet: supervise the MSFA head and feed its heatmaps to FR
    activation: str = "relu"  # unet: relu | leaky_relu (adaloss paper §4.1)


@dataclass
class HandConfig:
    ruler: tuple[int, int] = (0, 4)  # 0-based landmarks whose distance is a known length (the wrist width)
    ruler_mm: float = 50.0  # that length in mm: the field's normalisation for the hand atlas


@dataclass
class FaceConfig:
    crop_scale: float = 1.25  # square crop around the landmarks' box, this many times its longer side


@dataclass
class DataConfig:
    dataset: str = "phantom"  # registry trainables.data.DATASETS: phantom | isbi2015 | hand | 300w
    root: str = ""  # dataset folder in its published layout; phantom: "" = a cache folder keyed by its config
    input_size: tuple[int, int] = (128, 104)  # (H, W) network input; ISBI's aspect ratio is 2400:1935
    num_landmarks: int = 19  # isbi2015 19, hand 37, 300w 68
    annotator: str = "mean"  # isbi2015, phantom: mean | senior | junior (ground truth = mean of the two doctors)
    train_split: str = "train"  # isbi2015: train | test1 | test2; hand: split-file stems joined by +; 300w: train | ...
    val_split: str = "test1"  # evaluated every epoch (model selection); the final test is eval.split
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training batches only; all 0 = off
    phantom: PhantomConfig = field(default_factory=PhantomConfig)  # used when dataset == phantom
    hand: HandConfig = field(default_factory=HandConfig)  # used when dataset == hand
    face: FaceConfig = field(default_factory=FaceConfig)  # used when dataset == 300w


@dataclass
class AdalossConfig:
    window: int = 3  # w: epochs of per-landmark loss history (adaloss paper §4: w = 3)
    rho: float = 0.9  # ρ in eq 5 (adaloss paper §4: 0.9)
    sigma0: float = 0.0  # σ_0 in target.sigma_units; 0 = a quarter of the smaller side of the input (units input)
    #                      or of the finest head's map (units head): the paper's choice, the same blob either way
    min_sigma: float = 1.0  # σ never falls below this, in target.sigma_units


@dataclass
class TargetConfig:
    schedule: str = "fixed"  # registry trainables.schedules.SCHEDULES: fixed | adaloss
    sigma: float = 3.0  # Gaussian σ in target.sigma_units (fixed schedule)
    sigma_units: str = "input"  # registry trainables.heatmaps.SIGMA_UNITS: input (the same blob at every head) |
    #                             head (σ in each head's own pixels: coarser at a coarser head, farnet §3.4)
    adaloss: AdalossConfig = field(default_factory=AdalossConfig)  # used when schedule == adaloss
    normalize: bool = False  # divide each target heatmap by its mean (adaloss paper §4.3)


@dataclass
class AWingConfig:
    omega: float = 14.0  # ω, the loss scale (Wang et al. 2019 defaults)
    theta: float = 0.5  # θ, where the log branch hands over to the linear one
    epsilon: float = 1.0  # ε
    alpha: float = 2.1  # α; the exponent is α − y


@dataclass
class LossConfig:
    type: str = "mse"  # registry trainables.losses.LOSSES: mse | ewc | awing
    alpha: float = 40.0  # EWC α, the weight at a landmark's centre (farnet paper §4.2: 40)
    awing: AWingConfig = field(default_factory=AWingConfig)  # used when type == awing


@dataclass
class DistillConfig:
    type: str = "none"  # registry trainables.distill.DISTILL_TERMS: none | cd | ed | both; none = plain fine-tuning
    lambda_: float = (
        0.002  # λ in L = L_R + λ·L_D (cross-task eq 2; §3: 0.002), L_R summed over pixels as eq 1. YAML: distill.lambda
    )
    mu: float = 2.0  # μ, the softmax temperature of L_CD (eq 3; §3: 2)
    teacher: str = ""  # "" = a frozen copy of the student's initial backbone and classifier; or a weights file


@dataclass
class OptimConfig:
    name: str = "adam"  # registry trainables.registry.OPTIMIZERS
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda; under Ray Train the worker's device wins
    threads: int = 0  # torch intra-op CPU threads; 0 = leave torch's setting (a Ray Train worker: its whole CPUs)
    precision: str = "fp32"  # registry trainables.precision.PRECISIONS: fp32 | bf16 | fp16 (autocast; losses stay fp32)
    channels_last: bool = False  # NHWC model and batches: the layout GPU tensor cores want for convolutions
    compile: bool = False  # torch.compile the model: fuses small kernels; the first steps pay the compilation
    checkpoint_every: int = 0  # a checkpoint every this many epochs (and the last); 0 = ceil(epochs / 30): at most 30
    checkpoint_metric: str = (
        ""  # also checkpoint each epoch that improves it; a study sets its primary objective; "" = none
    )
    checkpoint_mode: str = "min"  # min | max: which way checkpoint_metric improves


@dataclass
class EvalConfig:
    split: str = "test2"  # tested once, after the last epoch (test/* metrics); "" = none
    decode: str = "argmax"  # registry trainables.heatmaps.DECODERS: argmax | subpixel | dark
    dark_blur: float = 0.0  # σ of DARK's blur in the finest head's pixels; 0 = the target's σ there (DARK, MMPose)
    flip_test: bool = False  # average the heatmaps of the image and of its mirror (re-indexed by the flip map)
    fr_threshold: float = 0.0  # failure above this error; 0 = the field's: 4 mm, or 10 % NME for faces
    auc_threshold: float = 0.0  # CED and its AUC up to this error; 0 = 4 mm, or 8 % NME for faces
    preview: int = 4  # validation images drawn (overlays, heatmaps) for the trial's best epoch; 0 = none


@dataclass
class TrialConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, d: dict | None, prefix: str = "") -> "TrialConfig":
        """Build from a nested dict; raises ConfigError listing every problem by dotted path."""
        problems: list[str] = []
        cfg = _build(cls, d or {}, prefix, problems)
        if problems:
            raise ConfigError(problems)
        return cfg

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    def with_values(self, values: dict[str, Any]) -> "TrialConfig":
        """This config with dotted-path values set (a trial: base + what the sampler chose).

        The one place a trial's config is built; raises ConfigError for a bad path or value.
        """
        return TrialConfig.from_dict(apply_overrides(self.to_dict(), values)) if values else copy.deepcopy(self)


# A config name that is a Python keyword (distill.lambda) is stored in the field `lambda_`;
# everything outside this module only ever sees the YAML name.
def _attr(name: str) -> str:
    return f"{name}_" if keyword.iskeyword(name) else name


def _name(attr: str) -> str:
    return attr[:-1] if attr.endswith("_") and keyword.iskeyword(attr[:-1]) else attr


def _hints(cls: type) -> dict[str, Any]:
    """{YAML name: type} of a config dataclass."""
    return {_name(a): t for a, t in typing.get_type_hints(cls).items()}


# --- dotted paths -----------------------------------------------------------------------


def flatten(cfg: TrialConfig | dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"model.name": "unet", "data.input_size": [128, 104], ...}."""
    d = cfg.to_dict() if isinstance(cfg, TrialConfig) else cfg
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_overrides(d: dict, overrides: dict[str, Any]) -> dict:
    """Return a deep copy of nested dict d with {"a.b.c": v} overrides set."""
    out = copy.deepcopy(d)
    for path, value in overrides.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            if node.get(p) is None:  # absent, or an empty YAML section
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError([f"{path}: {p!r} is a value, not a section"])
        node[leaf] = value
    return out


def field_type(path: str, root: type = None) -> type | None:
    """The declared type of a dotted path in the trial config, or None if there is no such leaf."""
    t: Any = root or TrialConfig
    for part in path.split("."):
        if not dataclasses.is_dataclass(t):
            return None
        hints = _hints(t)
        if part not in hints:
            return None
        t = hints[part]
    return None if dataclasses.is_dataclass(t) else t


def leaf_paths(root: type = None, prefix: str = "") -> list[str]:
    """Every dotted leaf path of the config tree (for did-you-mean suggestions)."""
    root = root or TrialConfig
    out = []
    for name, t in _hints(root).items():
        if dataclasses.is_dataclass(t):
            out += leaf_paths(t, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def suggest(word: str, choices) -> str:
    """' (did you mean X?)' or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(path: str, value: Any, t: Any) -> tuple[Any, str | None]:
    """Coerce value to the declared type t; returns (value, problem or None)."""
    origin = typing.get_origin(t)
    if origin is tuple:
        args = typing.get_args(t)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return value, f"{path}: expected a list of {len(args)} {args[0].__name__}s, got {value!r}"
        items = []
        for i, (v, a) in enumerate(zip(value, args)):
            v, err = check_value(f"{path}[{i}]", v, a)
            if err:
                return value, err
            items.append(v)
        return tuple(items), None
    if t is bool:
        if isinstance(value, bool):
            return value, None
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
    elif t is str:
        if isinstance(value, str):
            return value, None
    return value, f"{path}: expected {getattr(t, '__name__', t)}, got {type(value).__name__} {value!r}"


def _build(cls: type, d: Any, prefix: str, problems: list[str]):
    if not isinstance(d, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
        return cls()
    hints = _hints(cls)
    kwargs = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if key not in hints:
            problems.append(f"{path}: unknown key{suggest(str(key), hints)}; valid keys: {', '.join(hints)}")
            continue
        t = hints[key]
        if dataclasses.is_dataclass(t):
            kwargs[_attr(key)] = _build(t, value, f"{path}.", problems)
        else:
            value, err = check_value(path, value, t)
            if err:
                problems.append(err)
            else:
                kwargs[_attr(key)] = value
    return cls(**kwargs)


def _to_plain(v):
    if isinstance(v, dict):
        return {_name(k): _to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    return v
