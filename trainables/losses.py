"""Heatmap regression losses. Each returns the loss per landmark, (K,), so that σ schedules
(Adaloss) can follow each landmark; the training loss is their mean.

    loss_fn = LOSSES["ewc"]
    per_lm = loss_fn(pred, target, cfg.loss, valid)     # (B, K, H, W) ×2, LossConfig, (B, K) -> (K,)
    loss = per_lm.mean()

Every loss is a pixel-wise map averaged over the heatmap's pixels and over the images in which
the landmark counts (`valid`: annotated, and its target reaches this map; trainables/objective.py);
an image where it does not adds nothing, and a landmark valid in no image has loss 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainables.config import LossConfig


def per_landmark(loss_map: Tensor, valid: Tensor | None) -> Tensor:
    """(B, K, H, W) pixel losses, (B, K) bool -> (K,) mean over pixels and the valid images."""
    per_image = loss_map.mean(dim=(2, 3))  # (B, K)
    if valid is None:
        return per_image.mean(dim=0)
    weights = valid.to(per_image.dtype)
    return torch.where(valid, per_image, 0).sum(dim=0) / weights.sum(dim=0).clamp_min(1)


def _finite(target: Tensor) -> Tensor:
    # A missing landmark's target may be NaN; masking the mean alone would still send 0·NaN = NaN
    # back through the loss map, so its pixels become 0 before any arithmetic.
    return torch.nan_to_num(target, nan=0.0)


def mse(pred: Tensor, target: Tensor, cfg: LossConfig, valid: Tensor | None = None) -> Tensor:
    """Mean squared error, farnet paper eq 2: (y - ŷ)². (B, K, H, W) ×2 -> (K,)."""
    return per_landmark((pred - _finite(target)) ** 2, valid)


def ewc(pred: Tensor, target: Tensor, cfg: LossConfig, valid: Tensor | None = None) -> Tensor:
    """Exponential Weighted Center loss, farnet paper eq 3: (y - ŷ)² · α^y with α = `loss.alpha`.

    The weight grows from 1 in the background (y = 0) to α at the landmark (y = 1), so errors
    near a landmark count up to α times more. Meant for targets in [0, 1] (not `target.normalize`).
    (B, K, H, W) ×2 -> (K,).
    """
    target = _finite(target)
    return per_landmark((pred - target) ** 2 * torch.pow(cfg.alpha, target), valid)


def awing(pred: Tensor, target: Tensor, cfg: LossConfig, valid: Tensor | None = None) -> Tensor:
    """Adaptive Wing loss (Wang, Bo & Fuxin, ICCV 2019, eq 5), parameters `loss.awing.*`.

    With d = |y - ŷ| and the exponent a = α − y:
        ω·ln(1 + (d/ε)^a)    if d < θ
        A·d − C              otherwise, where
        A = ω · a · (θ/ε)^(a−1) / (ε·(1 + (θ/ε)^a)),   C = θ·A − ω·ln(1 + (θ/ε)^a)
    so the two branches meet with equal value and slope at d = θ. The paper's weighted loss map
    (a ×10 weight on the dilated foreground) is not included.
    (B, K, H, W) ×2 -> (K,).
    """
    p = cfg.awing
    target = _finite(target)
    d = (target - pred).abs()
    a = p.alpha - target
    ratio = p.theta / p.epsilon
    big_a = p.omega * a * ratio ** (a - 1) / (p.epsilon * (1 + ratio**a))
    big_c = p.theta * big_a - p.omega * torch.log1p(ratio**a)
    near = p.omega * torch.log1p((d / p.epsilon) ** a)
    far = big_a * d - big_c
    return per_landmark(torch.where(d < p.theta, near, far), valid)


LOSSES = {"mse": mse, "ewc": ewc, "awing": awing}


def loss_problems(cfg: LossConfig, normalize_targets: bool) -> list[str]:
    """What makes a loss config unusable, as messages naming the config path."""
    out = []
    if cfg.type == "ewc" and not cfg.alpha >= 1:
        out.append(f"loss.alpha: EWC's weight α^y must not fall below 1 at the centre; got {cfg.alpha}, use α ≥ 1")
    if cfg.type in ("ewc", "awing") and normalize_targets:
        # α^y and α − y assume y in [0, 1]; a normalised target peaks near HW/(2πσ²).
        out.append(f"target.normalize: true needs loss.type mse; {cfg.type} assumes targets in [0, 1]")
    if cfg.type == "awing":
        for name in ("omega", "theta", "epsilon"):
            if not getattr(cfg.awing, name) > 0:
                out.append(f"loss.awing.{name}: must be > 0, got {getattr(cfg.awing, name)}")
        if not cfg.awing.alpha > 1:
            out.append(f"loss.awing.alpha: must be > 1 (the exponent α − y must stay > 0), got {cfg.awing.alpha}")
    return out
