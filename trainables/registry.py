"""Registries and config validation: every problem `fit` would hit before its first step.

    problems = config_problems(TrialConfig.from_dict({"optim": {"name": "adamm"}}))
    # [Problem("optim.name", "unknown 'adamm'; choose one of ['adadelta', 'adam', 'adamw', 'sgd']")]

A registry is a dict keyed by the YAML name. Spec validation (study/spec/) calls
`config_problems` on the base and on each searched value, so a bad config fails before Ray
starts; `fit` calls it again, so a trial run without the study does too.
"""

from __future__ import annotations

import torch

from trainables import data as datasets
from trainables.config import Problem, TrialConfig, augment_problems, suggest
from trainables.distill import DISTILL_TERMS, distill_problems
from trainables.heatmaps import DECODERS, SIGMA_UNITS
from trainables.losses import LOSSES, loss_problems
from trainables.metrics import all_metric_names, reported_metrics
from trainables.models import MODELS, model_problems
from trainables.precision import PRECISIONS
from trainables.schedules import SCHEDULES, schedule_problems

OPTIMIZERS = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay),
    "adadelta": lambda params, c: torch.optim.Adadelta(params, lr=c.lr, weight_decay=c.weight_decay),
}

# Registry-backed config fields: (dotted path, registry). A wrong name lists the valid ones.
REGISTRIES = {
    "model.name": MODELS,
    "data.dataset": datasets.DATASETS,
    "target.schedule": SCHEDULES,
    "target.sigma_units": SIGMA_UNITS,
    "loss.type": LOSSES,
    "distill.type": DISTILL_TERMS,
    "optim.name": OPTIMIZERS,
    "eval.decode": DECODERS,
    "train.precision": PRECISIONS,
}


def config_problems(cfg: TrialConfig, notes: list[Problem] | None = None) -> list[Problem]:
    """Everything that would stop `fit` before its first step, as messages naming the config path.

    Notes (Problem.NOTE, e.g. 300-W points outside their image) stop nothing: they are appended to
    `notes` when it is given (spec validation prints them), else dropped.
    """
    out = []
    for path, registry in REGISTRIES.items():
        section, key = path.split(".")
        name = getattr(getattr(cfg, section), key)
        if name not in registry:
            out.append(f"{path}: unknown {name!r}; choose one of {sorted(registry)}")
    out += model_problems(cfg.model, cfg.data.input_size)
    out += schedule_problems(cfg.target)
    out += loss_problems(cfg.loss, cfg.target.normalize)
    if cfg.distill.type in DISTILL_TERMS and cfg.model.name in MODELS:
        out += distill_problems(cfg.distill, cfg.model)
    for path, value, most in [
        ("train.epochs", cfg.train.epochs, 100_000),
        ("train.batch_size", cfg.train.batch_size, 65_536),
    ]:
        if value < 1:
            out.append(f"{path}: must be at least 1, got {value}")
        elif value > most:  # a stray digit: caught here rather than after days of training
            out.append(f"{path}: {value} is more than {most:,}, which can only be a typo")
    if not 0 <= cfg.eval.preview <= 8:
        out.append(f"eval.preview: must be 0 to 8 images (0 = no pictures), got {cfg.eval.preview}")
    if not cfg.optim.lr > 0:
        out.append(f"optim.lr: must be > 0, got {cfg.optim.lr}")
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        out.append(f"train.device: unknown {cfg.train.device!r}; choose one of ['auto', 'cpu', 'cuda']")
    out += train_problems(cfg)
    out += augment_problems(cfg.data.augment)
    if cfg.data.dataset in datasets.DATASETS:
        out += datasets.problems(cfg.data)
        if cfg.eval.split:
            out += datasets.split_problems(cfg.data, cfg.eval.split, "eval.split")
    for path, value in [
        ("eval.fr_threshold", cfg.eval.fr_threshold),
        ("eval.auc_threshold", cfg.eval.auc_threshold),
        ("eval.dark_blur", cfg.eval.dark_blur),
    ]:
        if value < 0:
            out.append(f"{path}: must be ≥ 0 (0 = the field's default), got {value}")
    found = [Problem.of(p) for p in out]
    if notes is not None:
        notes += [p for p in found if p.kind == Problem.NOTE]
    return [p for p in found if p.kind != Problem.NOTE]


def train_problems(cfg: TrialConfig) -> list[str]:
    """The speed and checkpoint fields of `train.*` (precision is a registry, checked above)."""
    t, out = cfg.train, []
    for path, value in [("train.threads", t.threads), ("train.checkpoint_every", t.checkpoint_every)]:
        if value < 0:
            out.append(f"{path}: must be ≥ 0 (0 = the default), got {value}")
    if t.checkpoint_mode not in ("min", "max"):
        out.append(f"train.checkpoint_mode: expected min or max, got {t.checkpoint_mode!r}")
    if t.checkpoint_metric:
        # Reported every epoch, so every epoch can be judged: not test/* (the last epoch only).
        dataset = datasets.DATASETS.get(cfg.data.dataset)
        known = reported_metrics(dataset.unit) if dataset else all_metric_names()
        if t.checkpoint_metric not in known:
            out.append(
                f"train.checkpoint_metric: {t.checkpoint_metric!r} is not reported every epoch"
                f'{suggest(t.checkpoint_metric, known)}; use one of {", ".join(known)}, or "" for none'
            )
    return out
