"""The field's landmark metrics (ISBI 2015 challenge definitions).

MRE: mean radial error in mm over all landmarks of all images.
SDR at r mm: the fraction (in %) of landmarks whose radial error is at most r mm.

    err = radial_errors_mm(pred, gt, spacing)       # (N, K, 2), (N, K, 2), (N,) -> (N, K)
    summarize(err, "val")                           # {"val/mre_mm": ..., "val/sdr_2mm": ...}
"""

from __future__ import annotations

import torch
from torch import Tensor

SDR_RADII_MM = (2.0, 2.5, 3.0, 4.0)


def radial_errors_mm(pred: Tensor, gt: Tensor, spacing_mm: Tensor) -> Tensor:
    """Euclidean distance per landmark in mm. pred, gt: (N, K, 2) pixels; spacing_mm: (N,) -> (N, K)."""
    return torch.linalg.vector_norm(pred - gt, dim=-1) * spacing_mm[:, None]


def _radius_name(r: float) -> str:
    return f"{r:g}mm"  # 2.0 -> "2mm", 2.5 -> "2.5mm"


def summarize(errors_mm: Tensor, split: str) -> dict[str, float]:
    """(N, K) errors in mm -> {split/mre_mm, split/mre_sd_mm, split/sdr_<r>mm (percent)}."""
    e = errors_mm.double().flatten()
    out = {f"{split}/mre_mm": e.mean().item(), f"{split}/mre_sd_mm": e.std(unbiased=False).item()}
    for r in SDR_RADII_MM:
        out[f"{split}/sdr_{_radius_name(r)}"] = 100.0 * (e <= r).double().mean().item()
    return out


def reported_metrics() -> list[str]:
    """Every metric name the trainer reports each epoch: what a spec's objectives may name."""
    per_split = ["mre_mm", "mre_sd_mm"] + [f"sdr_{_radius_name(r)}" for r in SDR_RADII_MM]
    return (
        ["train/loss", "val/loss"]
        + [f"val/{m}" for m in per_split]
        + ["cost/params_m", "cost/gflops", "cost/latency_ms", "cost/epoch_s"]
    )
