"""The shared training loop (`fit`): plain PyTorch, no Ray, no MLflow.

    from trainables import TrialConfig, fit
    cfg = TrialConfig.from_dict({"train": {"epochs": 3}})
    fit(cfg, report=lambda metrics, checkpoint_dir: print(metrics))

`report(metrics, checkpoint_dir)` is called once per epoch with the metrics (names follow
`split/name_unit`, plus `epoch`) and, on the epochs `train.checkpoint_*` selects
(trainables/checkpoint.py), a folder holding `checkpoint.pt`, valid only during the call; on the
others checkpoint_dir is None. The Ray Train adapter, the tests and the benchmarks each supply
their own `report`. Under torch.distributed (Ray Train with several workers) the model is
wrapped in DDP, each rank trains on its shard and only rank 0 writes checkpoints.

Speed knobs (`train.*`): `threads` sets torch's intra-op threads for the call (0 leaves them as
they are: torch's default standalone, the worker's CPU share under Ray, set by ray_adapter.py);
`precision` runs forward passes under autocast (trainables/precision.py) with losses in fp32;
`channels_last` puts the model and batches in NHWC. Batches leave the dataset as uint8 and
become floats on the device; on CUDA they come from pinned memory with non-blocking copies.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from trainables import data as datasets
from trainables.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointPolicy,
    Report,
    check_complete,
    report_with_checkpoint,
    saved_history,
)
from trainables.config import ConfigError, Diverged, TrialConfig
from trainables.cost import cost_figures
from trainables.data.augment import augment, is_active
from trainables.data.cache import default_cache_dir
from trainables.data.dataset import LandmarkDataset, normalize
from trainables.distill import Distiller, distill_term
from trainables.heatmaps import sigma_frame
from trainables.losses import LOSSES
from trainables.metrics import format_table, per_landmark_table
from trainables.models import build_model
from trainables.objective import EpochLosses, HeadsLoss, Scorer
from trainables.precision import autocast, device_problem, grad_scaler, to_layout
from trainables.registry import OPTIMIZERS, config_problems
from trainables.schedules import SCHEDULES


def load_split(cfg: TrialConfig, split: str) -> LandmarkDataset:
    """One split of cfg.data at the input size, through the node's image cache."""
    spec = datasets.DATASETS[cfg.data.dataset]
    return LandmarkDataset(
        datasets.records(cfg.data, split),
        cfg.data.input_size,
        spec.read_image,
        default_cache_dir(),
        name=f"{cfg.data.dataset}/{split}",
    )


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
    problem = device_problem(device, cfg.train.precision)
    if problem:
        raise ConfigError([problem])
    with intra_op_threads(cfg.train.threads):
        return _fit(cfg, report, resume_from, device)


def _fit(cfg: TrialConfig, report: Report, resume_from: Path | None, device: torch.device) -> dict:
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank = dist.get_rank() if distributed else 0
    precision, channels_last = cfg.train.precision, cfg.train.channels_last

    torch.manual_seed(cfg.train.seed)
    train_ds = load_split(cfg, cfg.data.train_split)
    val_ds = load_split(cfg, cfg.data.val_split)
    test_ds = load_split(cfg, cfg.eval.split) if cfg.eval.split else None
    num_landmarks = cfg.data.num_landmarks
    spec = datasets.DATASETS[cfg.data.dataset]
    flip_index = list(spec.flip_index(num_landmarks))

    model = to_layout(build_model(cfg.model, num_landmarks).to(device), channels_last)
    strides = tuple(model.strides)
    costs = cost_figures(model, cfg.data.input_size, device)  # of the deployed model: before a classifier is unfrozen
    distiller = Distiller(cfg.distill, model, cfg.model) if cfg.distill.type != "none" else None
    optimizer = OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)
    scaler = grad_scaler(device, precision)
    # Adaloss's σ0 = 0 is a quarter of the map σ is measured on: the input, or the finest head's own map.
    frame = sigma_frame(cfg.data.input_size, strides[-1], cfg.target.sigma_units)
    schedule = SCHEDULES[cfg.target.schedule](cfg.target, num_landmarks, frame)
    policy = CheckpointPolicy(
        cfg.train.checkpoint_every, cfg.train.epochs, cfg.train.checkpoint_metric, cfg.train.checkpoint_mode
    )
    heads_loss = HeadsLoss(LOSSES[cfg.loss.type], cfg, strides)
    scorer = Scorer(cfg, spec, flip_index, device)

    start_epoch = 0
    history: list[dict] = []  # every epoch's metrics, saved with each checkpoint (history.json)
    if resume_from is not None:
        check_complete(resume_from)  # a half-written checkpoint is an error, never a silent fresh start
        # Load to CPU: the RNG state must stay a CPU ByteTensor; load_state_dict moves the rest.
        state = torch.load(Path(resume_from) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        policy.load_state_dict(state.get("checkpoint", {}))
        torch.set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        history = [m for m in saved_history(resume_from) if m.get("epoch", 0) <= start_epoch]
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    # Steps and scoring run the compiled module; checkpoints save the plain one (no `_orig_mod.` keys).
    run_model = torch.compile(model) if cfg.train.compile else model

    sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.train.seed) if distributed else None
    pin = device.type == "cuda"  # page-locked batches: the host-to-device copy runs asynchronously
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
            pin_memory=pin,
        )
        t0 = time.perf_counter()
        model.train()
        sigma = schedule.sigma.to(device)  # the σ this epoch trains with, reported below
        epoch_losses = EpochLosses(num_landmarks, device)
        distill_sum = torch.zeros((), device=device)
        n_batches = 0
        for pixels, coords, _, _ in loader:
            images, coords = normalize(pixels.to(device, non_blocking=pin)), coords.to(device, non_blocking=pin)
            if is_active(cfg.data.augment):
                images, coords = augment(images, coords, cfg.data.augment, flip_index, aug_gen)
            per_landmark, distill_loss = train_step(
                run_model,
                to_layout(images, channels_last),
                coords,
                sigma,
                heads_loss,
                optimizer,
                scaler,
                precision,
                distiller,
                cfg.distill.lambda_,
            )
            epoch_losses.add(per_landmark, heads_loss.targeted(coords, sigma))
            if distill_loss is not None:
                distill_sum += distill_loss
            n_batches += 1
        if distributed:  # every rank must step Adaloss with the same losses, or their σ would drift apart
            epoch_losses.all_reduce()
        per_landmark_loss = epoch_losses.result()  # (K,); NaN: no target all epoch, Adaloss skips it
        train_loss = per_landmark_loss.nanmean().item()  # over the landmarks that had a target
        epoch_s = time.perf_counter() - t0
        if not epoch_losses.finite():
            raise Diverged(
                f"train/loss is {per_landmark_loss.mean().item()} at epoch {epoch + 1}; lower optim.lr or "
                "check the data"
            )
        train = {
            "train/loss": train_loss,
            **{f"train/loss_lm_{k}": v for k, v in enumerate(per_landmark_loss.tolist())},
            **{f"target/sigma_{k}": v for k, v in enumerate(sigma.tolist())},
        }
        if distiller is not None:
            train["train/loss_distill"] = (distill_sum / max(n_batches, 1)).item()
        schedule.step(per_landmark_loss, train_loss)

        val, val_errors = scorer(run_model, val_ds, sigma, heads_loss, "val")
        # Costs ride along every epoch so that Tune's last result (what Optuna sees) always has them.
        metrics = {
            "epoch": epoch + 1,
            **train,
            **val,
            **costs,
            "cost/epoch_s": epoch_s,
            "cost/workers": float(dist.get_world_size() if distributed else 1),
        }  # DDP ranks behind epoch_s
        tables = {}
        if epoch + 1 == cfg.train.epochs and test_ds is not None:  # the final test, once, on the last model
            test, test_errors = scorer(run_model, test_ds, sigma, heads_loss, "test")
            tables[f"test_{cfg.eval.split}"] = format_table(per_landmark_table(test_errors, spec.unit))
            metrics.update(test)
        history.append(metrics)
        if not policy.due(epoch + 1, metrics):
            report(metrics, None)
            continue
        # What the driver draws for this epoch (CED, overlays, heatmaps) if it turns out the trial's best.
        preview = scorer.preview(model, val_ds, val_errors, cfg.eval.preview, heads_loss, sigma) if rank == 0 else None
        report_with_checkpoint(
            report,
            metrics,
            rank,
            checkpoint_state(_unwrap(model), optimizer, scaler, schedule, policy, epoch + 1),
            tables,
            preview,
            history,
        )
    return metrics


def train_step(
    model,
    images,
    coords,
    sigma,
    heads_loss: HeadsLoss,
    optimizer,
    scaler,
    precision: str,
    distiller: Distiller | None = None,
    distill_lambda: float = 0.0,
):
    """One optimisation step. images (B, 1, H, W) normalised, on the device; coords (B, K, 2); sigma (K,).

    The forward passes (student, and the distillation teacher) run under autocast at `precision`;
    the losses are computed in float32 outside it. Returns the detached per-landmark loss (K,)
    float32 and the distillation loss L_D (a 0-d tensor, or None without distillation).
    """
    with autocast(images.device, precision):
        heads = model(images)
        distill_loss = distiller.loss(images) if distiller is not None else None
    per_landmark = heads_loss(heads, coords, sigma)  # float32: the HeadsLoss casts each head
    loss = per_landmark.mean()
    if distill_loss is not None:
        loss = loss + distill_term(distill_lambda, distill_loss, heads)  # cross-task eq 2
        distill_loss = distill_loss.detach()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # a disabled scaler (fp32, bf16) passes the loss and the step through
    scaler.step(optimizer)
    scaler.update()
    return per_landmark.detach(), distill_loss


def checkpoint_state(model, optimizer, scaler, schedule, policy: CheckpointPolicy, epoch: int) -> dict:
    """What checkpoint.pt holds: everything an exact resume needs after `epoch` (1-based) epochs."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),  # {} unless fp16
        "schedule": schedule.state_dict(),
        "checkpoint": policy.state_dict(),  # the best checkpoint_metric so far
        "rng": torch.get_rng_state(),
        "epoch": epoch,
    }


@contextlib.contextmanager
def intra_op_threads(n: int):
    """torch's intra-op thread count set to n inside the block (0: left as it is), restored after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _auto_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
