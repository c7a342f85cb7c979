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

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from trainables import data as datasets
from trainables.config import ConfigError, TrialConfig
from trainables.data.dataset import LandmarkDataset, resize_coords
from trainables.heatmaps import DECODERS, render_gaussians
from trainables.cost import cost_figures
from trainables.losses import LOSSES
from trainables.metrics import radial_errors_mm, summarize
from trainables.models import MODELS, build_model, model_problems
from trainables.schedules import SCHEDULES

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
    "optim.name": OPTIMIZERS,
    "eval.decode": DECODERS,
}

CHECKPOINT_FILE = "checkpoint.pt"


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
    for path, value in [("train.epochs", cfg.train.epochs), ("train.batch_size", cfg.train.batch_size)]:
        if value < 1:
            out.append(f"{path}: must be at least 1, got {value}")
    for path, value in [("optim.lr", cfg.optim.lr), ("target.sigma", cfg.target.sigma)]:
        if not value > 0:
            out.append(f"{path}: must be > 0, got {value}")
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        out.append(f"train.device: unknown {cfg.train.device!r}; choose one of ['auto', 'cpu', 'cuda']")
    if cfg.data.dataset in datasets.DATASETS:
        out += datasets.problems(cfg.data)
    return out


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
    train_ds = LandmarkDataset(datasets.records(cfg.data, cfg.data.train_split), cfg.data.input_size)
    val_ds = LandmarkDataset(datasets.records(cfg.data, cfg.data.val_split), cfg.data.input_size)
    num_landmarks = cfg.data.num_landmarks

    model = build_model(cfg.model, num_landmarks).to(device)
    strides = tuple(model.strides)
    costs = cost_figures(model, cfg.data.input_size, device)
    optimizer = OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)
    schedule = SCHEDULES[cfg.target.schedule](cfg.target, num_landmarks)
    loss_fn = LOSSES[cfg.loss.type]
    decode = DECODERS[cfg.eval.decode]

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
        sigma = schedule.sigma.to(device)
        loss_sum = torch.zeros(num_landmarks, device=device)
        n_batches = 0
        for images, coords, _, _ in loader:
            images, coords = images.to(device), coords.to(device)
            per_landmark = head_losses(model(images), coords, sigma, strides, loss_fn)
            loss = per_landmark.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += per_landmark.detach()
            n_batches += 1
        per_landmark_loss = (loss_sum / max(n_batches, 1)).cpu()
        train_loss = per_landmark_loss.mean().item()
        epoch_s = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise Diverged(f"train/loss is {train_loss} at epoch {epoch + 1}; lower optim.lr or check the data")
        schedule.step(per_landmark_loss, train_loss)

        val = evaluate(model, val_ds, schedule.sigma.to(device), loss_fn, decode, strides, device, cfg.train.batch_size)
        # Costs ride along every epoch so that Tune's last result (what Optuna sees) always has them.
        metrics = {"epoch": epoch + 1, "train/loss": train_loss, **val, **costs, "cost/epoch_s": epoch_s}
        _report_with_checkpoint(report, metrics, rank, {
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch + 1,
        })
    return metrics


def head_losses(heads: list, coords, sigma, strides: tuple[int, ...], loss_fn):
    """Per-landmark loss summed over heads, each against a target rendered at its own stride. -> (K,)"""
    total = 0
    for heatmaps, stride in zip(heads, strides):
        target = render_gaussians(coords, sigma, tuple(heatmaps.shape[-2:]), stride)
        total = total + loss_fn(heatmaps, target)
    return total


@torch.no_grad()
def evaluate(model, ds: LandmarkDataset, sigma, loss_fn, decode, strides: tuple[int, ...], device, batch_size: int) -> dict:
    """Validation loss and landmark metrics from the finest head, in eval mode (BatchNorm uses running stats)."""
    model.eval()
    errors, loss_sum, n = [], 0.0, 0
    for images, coords, to_orig, spacing in DataLoader(ds, batch_size=batch_size):
        images, coords = images.to(device), coords.to(device)
        heads = model(images)
        loss_sum += head_losses(heads, coords, sigma, strides, loss_fn).mean().item() * len(images)
        n += len(images)
        pred = decode(heads[-1].float(), strides[-1]).cpu()
        # Errors are measured in the original image's pixels, then mm.
        scale = to_orig[:, None, :]
        errors.append(radial_errors_mm(resize_coords(pred, scale), resize_coords(coords.cpu(), scale), spacing))
    return {"val/loss": loss_sum / n, **summarize(torch.cat(errors), "val")}


def _report_with_checkpoint(report: Report, metrics: dict, rank: int, state: dict) -> None:
    if rank != 0:
        report(metrics, None)
        return
    folder = Path(tempfile.mkdtemp(prefix="landmark-ckpt-"))
    try:
        torch.save(state, folder / CHECKPOINT_FILE)
        report(metrics, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _auto_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
