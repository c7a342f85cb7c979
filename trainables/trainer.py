"""The shared training loop (`fit`): plain PyTorch, no Ray, no MLflow.

    from trainables import TrialConfig, fit
    cfg = TrialConfig.from_dict({"train": {"epochs": 3}})
    fit(cfg, report=lambda metrics, checkpoint_dir: print(metrics))

`report(metrics, checkpoint_dir)` is called once per epoch with the metrics (names follow
`split/name_unit`, plus `epoch`) and a folder holding `checkpoint.pt`, valid only during the
call. The Ray Train adapter, the tests and the benchmarks each supply their own `report`.
Under torch.distributed (Ray Train with several workers) the model is wrapped in DDP, each rank
trains on its shard and only rank 0 writes checkpoints.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from trainables import data as datasets
from trainables.config import ConfigError, TrialConfig
from trainables.data.augment import augment, is_active, validate as augment_problems
from trainables.data.cache import default_cache_dir
from trainables.data.dataset import PIXEL_MEAN, PIXEL_STD, LandmarkDataset, to_original
from trainables.cost import cost_figures
from trainables.distill import DISTILL_TERMS, Distiller, distill_problems, distill_term
from trainables.heatmaps import DECODERS, TargetRenderer
from trainables.losses import LOSSES, loss_problems
from trainables.metrics import (NME_AUC_PERCENT, NME_FR_PERCENT, format_table, normalized_errors,
                                 per_landmark_table, radial_errors_mm, summarize)
from trainables.models import MODELS, build_model, model_problems
from trainables.schedules import SCHEDULES, schedule_problems

Report = Callable[[dict, "Path | None"], None]

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
    "loss.type": LOSSES,
    "distill.type": DISTILL_TERMS,
    "optim.name": OPTIMIZERS,
    "eval.decode": DECODERS,
}

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"  # the epoch's reported metrics, beside its checkpoint
PREVIEW_FILE = "preview.npz"  # the arrays behind the trial's pictures (Scorer.preview)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def config_problems(cfg: TrialConfig) -> list[str]:
    """Everything that would stop `fit` before its first step, as messages naming the config path."""
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
    for path, value in [("train.epochs", cfg.train.epochs), ("train.batch_size", cfg.train.batch_size)]:
        if value < 1:
            out.append(f"{path}: must be at least 1, got {value}")
    if not 0 <= cfg.eval.preview <= 8:
        out.append(f"eval.preview: must be 0 to 8 images (0 = no pictures), got {cfg.eval.preview}")
    if not cfg.optim.lr > 0:
        out.append(f"optim.lr: must be > 0, got {cfg.optim.lr}")
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        out.append(f"train.device: unknown {cfg.train.device!r}; choose one of ['auto', 'cpu', 'cuda']")
    out += augment_problems(cfg.data.augment)
    if cfg.data.dataset in datasets.DATASETS:
        out += datasets.problems(cfg.data)
        if cfg.eval.split:
            out += datasets.split_problems(cfg.data, cfg.eval.split, "eval.split")
    for path, value in [("eval.fr_threshold", cfg.eval.fr_threshold), ("eval.auc_threshold", cfg.eval.auc_threshold)]:
        if value < 0:
            out.append(f"{path}: must be ≥ 0 (0 = the field's default), got {value}")
    return out


def load_split(cfg: TrialConfig, split: str) -> LandmarkDataset:
    """One split of cfg.data at the input size, through the node's image cache."""
    spec = datasets.DATASETS[cfg.data.dataset]
    return LandmarkDataset(datasets.records(cfg.data, split), cfg.data.input_size, spec.read_image,
                           default_cache_dir(), name=f"{cfg.data.dataset}/{split}")


def fit(
    cfg: TrialConfig,
    report: Report,
    resume_from: Path | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """Train cfg.train.epochs epochs (continuing from a checkpoint folder if given); returns the last metrics."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)
    device = torch.device(device or _auto_device(cfg.train.device))
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank = dist.get_rank() if distributed else 0

    torch.manual_seed(cfg.train.seed)
    train_ds = load_split(cfg, cfg.data.train_split)
    val_ds = load_split(cfg, cfg.data.val_split)
    test_ds = load_split(cfg, cfg.eval.split) if cfg.eval.split else None
    num_landmarks = cfg.data.num_landmarks
    spec = datasets.DATASETS[cfg.data.dataset]
    flip_index = list(spec.flip_index(num_landmarks))

    model = build_model(cfg.model, num_landmarks).to(device)
    strides = tuple(model.strides)
    costs = cost_figures(model, cfg.data.input_size, device)  # of the deployed model: before a classifier is unfrozen
    distiller = Distiller(cfg.distill, model, cfg.model) if cfg.distill.type != "none" else None
    optimizer = OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)
    schedule = SCHEDULES[cfg.target.schedule](cfg.target, num_landmarks, cfg.data.input_size)
    objective = Objective(LOSSES[cfg.loss.type], cfg, strides)
    scorer = Scorer(cfg, spec, flip_index, device)

    start_epoch = 0
    if resume_from is not None and (Path(resume_from) / CHECKPOINT_FILE).exists():
        # Load to CPU: the RNG state must stay a CPU ByteTensor; load_state_dict moves the rest.
        state = torch.load(Path(resume_from) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        start_epoch = state["epoch"]
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.train.seed) if distributed else None
    metrics: dict = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        # The shuffle order depends only on (seed, epoch), so a resumed trial sees the same batches.
        gen = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
        aug_gen = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch + 50_000_017)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(
            train_ds,
            batch_size=cfg.train.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=gen,
            drop_last=len(train_ds) > cfg.train.batch_size,
        )
        t0 = time.perf_counter()
        model.train()
        sigma = schedule.sigma.to(device)  # the σ this epoch trains with, reported below
        loss_sum = torch.zeros(num_landmarks, device=device)
        distill_sum = torch.zeros((), device=device)
        n_batches = 0
        for images, coords, _, _ in loader:
            images, coords = images.to(device), coords.to(device)
            if is_active(cfg.data.augment):
                images, coords = augment(images, coords, cfg.data.augment, flip_index, aug_gen)
            heads = model(images)
            per_landmark = objective(heads, coords, sigma)
            loss = per_landmark.mean()
            if distiller is not None:
                distill_loss = distiller.loss(images)
                loss = loss + distill_term(cfg.distill.lambda_, distill_loss, heads)  # cross-task eq 2
                distill_sum += distill_loss.detach()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += per_landmark.detach()
            n_batches += 1
        if distributed:  # every rank must step Adaloss with the same losses, or their σ would drift apart
            dist.all_reduce(loss_sum)
            loss_sum /= dist.get_world_size()
        per_landmark_loss = (loss_sum / max(n_batches, 1)).cpu()
        train_loss = per_landmark_loss.mean().item()
        epoch_s = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise Diverged(f"train/loss is {train_loss} at epoch {epoch + 1}; lower optim.lr or check the data")
        train = {"train/loss": train_loss, **{f"train/loss_lm_{k}": v for k, v in enumerate(per_landmark_loss.tolist())},
                 **{f"target/sigma_{k}": v for k, v in enumerate(sigma.tolist())}}
        if distiller is not None:
            train["train/loss_distill"] = (distill_sum / max(n_batches, 1)).item()
        schedule.step(per_landmark_loss, train_loss)

        val, val_errors = scorer(model, val_ds, sigma, objective, "val")
        # Costs ride along every epoch so that Tune's last result (what Optuna sees) always has them.
        metrics = {"epoch": epoch + 1, **train, **val, **costs, "cost/epoch_s": epoch_s,
                   "cost/workers": float(dist.get_world_size() if distributed else 1)}  # DDP ranks behind epoch_s
        tables = {}
        if epoch + 1 == cfg.train.epochs and test_ds is not None:  # the final test, once, on the last model
            test, test_errors = scorer(model, test_ds, sigma, objective, "test")
            tables[f"test_{cfg.eval.split}"] = format_table(per_landmark_table(test_errors, spec.unit))
            metrics.update(test)
        # What the driver draws for this epoch (CED, overlays, heatmaps) if it turns out the trial's best.
        preview = scorer.preview(model, val_ds, val_errors, cfg.eval.preview, strides[-1]) if rank == 0 else None
        _report_with_checkpoint(report, metrics, rank, {
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch + 1,
        }, tables, preview)
    return metrics


class Objective:
    """The regression loss L_R: each head against a target rendered at its own stride, summed over heads.

    heads: [(B, K, H/s, W/s) for s in strides], coords (B, K, 2) (NaN rows = not annotated),
    sigma (K,) -> (K,) per-landmark loss. Targets are rendered on the heads' device into buffers
    reused every step (`TargetRenderer`).
    """

    def __init__(self, loss_fn, cfg: TrialConfig, strides: tuple[int, ...]):
        self.loss_fn, self.loss_cfg, self.strides = loss_fn, cfg.loss, strides
        self.render = TargetRenderer(normalize=cfg.target.normalize)

    def __call__(self, heads: list, coords, sigma):
        valid = ~coords.isnan().any(dim=-1)  # (B, K)
        total = 0
        for slot, (heatmaps, stride) in enumerate(zip(heads, self.strides)):
            target = self.render(coords, sigma, tuple(heatmaps.shape[-2:]), stride, slot)
            total = total + self.loss_fn(heatmaps.float(), target, self.loss_cfg, valid)
        return total


class Scorer:
    """A split's loss and the field's metrics, from the finest head, in eval mode (BatchNorm uses running stats).

    Predictions are decoded (`eval.decode`), optionally averaged with the mirrored image's heatmaps
    (`eval.flip_test`), mapped back to the original image's pixels and scored there: radial errors
    in mm, or NME for faces. Returns ({split/metric: value}, per-landmark table as text).
    """

    def __init__(self, cfg: TrialConfig, spec, flip_index: list[int], device):
        self.decode, self.flip_test = DECODERS[cfg.eval.decode], cfg.eval.flip_test
        self.flip_index, self.unit, self.nme_pair = flip_index, spec.unit, spec.nme_pair
        self.batch_size, self.device = cfg.train.batch_size, device
        default_fr, default_auc = (NME_FR_PERCENT, NME_AUC_PERCENT) if spec.unit == "nme" else (4.0, 4.0)
        self.fr = cfg.eval.fr_threshold or default_fr
        self.auc = cfg.eval.auc_threshold or default_auc

    def _predict(self, model, images):
        """(B, 1, H, W) -> finest heatmaps (B, K, h, w) (flip-averaged if eval.flip_test), and the heads."""
        heads = model(images)
        heatmaps = heads[-1].float()
        if self.flip_test:
            # Exact for this pixel convention: heatmap column u of the mirror is column W/s - 1 - u here.
            mirrored = model(images.flip(-1))[-1].float().flip(-1)[:, self.flip_index]
            heatmaps = (heatmaps + mirrored) / 2
        return heatmaps, heads

    @torch.no_grad()
    def __call__(self, model, ds: LandmarkDataset, sigma, objective: Objective, split: str) -> tuple[dict, torch.Tensor]:
        """-> ({split/metric: value}, errors (N, K): mm, or NME % for faces; NaN = not annotated)."""
        model.eval()
        stride = objective.strides[-1]
        errors, loss_sum, n = [], 0.0, 0
        for images, coords, frames, spacing in DataLoader(ds, batch_size=self.batch_size):
            images, coords = images.to(self.device), coords.to(self.device)
            heatmaps, heads = self._predict(model, images)
            loss_sum += objective(heads, coords, sigma).mean().item() * len(images)
            n += len(images)
            pred = to_original(self.decode(heatmaps, stride).cpu(), frames)
            gt = to_original(coords.cpu(), frames)
            if self.unit == "nme":
                errors.append(normalized_errors(pred, gt, self.nme_pair))
            else:
                errors.append(radial_errors_mm(pred, gt, spacing))
        errors = torch.cat(errors)
        metrics = {f"{split}/loss": loss_sum / n,
                   **summarize(errors, split, self.unit, fr_threshold=self.fr, auc_threshold=self.auc)}
        return metrics, errors

    @torch.no_grad()
    def preview(self, model, ds: LandmarkDataset, errors: torch.Tensor, count: int, stride: int) -> dict:
        """The arrays behind a trial's pictures (dashboards/plots.py), from its first `count` images:
        images (n, H, W) uint8; gt, pred (n, K, 2) input px; heatmaps (n, h, w) float16, each
        landmark's map scaled to [0, 1] and the max taken over landmarks; errors (N, K) of the
        whole split (for the CED); unit, ced_threshold and stride as 0-d arrays."""
        out = {"errors": errors.float().numpy(), "unit": np.array(self.unit), "ced_threshold": np.array(self.auc),
               "stride": np.array(stride)}
        count = min(count, len(ds))
        if count > 0:
            model.eval()
            images, coords, _, _ = next(iter(DataLoader(ds, batch_size=count)))
            heatmaps, _ = self._predict(model, images.to(self.device))
            pred = self.decode(heatmaps, stride).cpu()
            peak = heatmaps.flatten(2).amax(-1).clamp(min=1e-12)[..., None, None]
            out |= {
                "images": ((images[:, 0] * PIXEL_STD + PIXEL_MEAN).clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
                "gt": coords.numpy(), "pred": pred.numpy(),
                "heatmaps": (heatmaps.clamp(min=0) / peak).amax(1).cpu().half().numpy(),
            }
        return out


def _report_with_checkpoint(report: Report, metrics: dict, rank: int, state: dict, tables: dict[str, str],
                            preview: dict | None) -> None:
    """Report with a checkpoint folder holding checkpoint.pt, the metrics (metrics.json: a run
    interrupted between saving and delivering them can report them again on resume), preview.npz
    (Scorer.preview) and, at the end, <name>_per_landmark.txt tables."""
    if rank != 0:
        report(metrics, None)
        return
    folder = Path(tempfile.mkdtemp(prefix="landmark-ckpt-"))
    try:
        torch.save(state, folder / CHECKPOINT_FILE)
        (folder / METRICS_FILE).write_text(json.dumps(metrics))
        if preview is not None:
            np.savez_compressed(folder / PREVIEW_FILE, **preview)
        for name, table in tables.items():
            (folder / f"{name}_per_landmark.txt").write_text(table + "\n")
        report(metrics, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _auto_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
