"""Heatmap regression losses. Each returns the loss per landmark, (K,), so that σ schedules
(Adaloss) can follow each landmark; the training loss is their mean.

    per_lm = LOSSES["mse"](pred, target)     # (B, K, H, W) x2 -> (K,)
    loss = per_lm.mean()
"""

from __future__ import annotations

from torch import Tensor


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error, farnet paper eq 2: mean over batch and pixels of (y - ŷ)². (B, K, H, W) -> (K,)."""
    return ((pred - target) ** 2).mean(dim=(0, 2, 3))


LOSSES = {"mse": mse}
