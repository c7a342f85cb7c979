"""The field's landmark metrics: ISBI 2015 challenge (cephalometry, mm) and 300-W (faces, NME).

Shapes: N images, K landmarks. Errors are (N, K); an entry is NaN where the landmark is not
annotated (ground truth NaN), and every statistic ignores non-finite entries (they count in no
numerator and no denominator). A statistic over no finite entry is NaN, never an exception.

ISBI 2015 challenge (Wang et al. 2016), unit "mm", over all landmark errors e_ik in mm:
    radial error  e_ik = ||pred_ik - gt_ik||_2 · spacing_i                      radial_errors_mm
    MRE           mean of e_ik                                                   split/mre_mm
    SD            population SD of e_ik                                          split/mre_sd_mm
    SDR at r mm   100 · #{e_ik <= r} / #{e_ik}, r in SDR_RADII_MM (inclusive)    split/sdr_<r>mm
    FR at t mm    100 · #{e_ik > t} / #{e_ik} = 100 - SDR at t                   split/fr
    AUC at T mm   ∫_0^T CED(x) dx / T, CED = the SDR curve as a fraction         split/auc

300-W (Sagonas et al. 2016), unit "nme", normalised by the inter-ocular distance d_i (outer eye
corners, landmarks 36 and 45 of the 68):
    NME per landmark  n_ik = 100 · ||pred_ik - gt_ik||_2 / d_i   (percent)       normalized_errors
    per-image NME     m_i  = mean over annotated k of n_ik                       per_image
    NME               mean of m_i over images                                    split/nme
    SD                population SD of m_i                                       split/nme_sd
    FR at t %         100 · #{m_i > t} / #{m_i}   (300-W: t = 10 %)              split/fr
    AUC at T %        ∫_0^T CED(x) dx / T over m_i (300-W: T = 8 %)              split/auc

The AUC is exact: with F the empirical CDF, ∫_0^T F(x) dx / T = mean_i max(0, T - e_i) / T.

    err = radial_errors_mm(pred, gt, spacing)       # (N, K, 2), (N, K, 2), (N,) -> (N, K)
    summarize(err, "val")                           # {"val/mre_mm": ..., "val/sdr_2mm": ...}
    nme = normalized_errors(pred, gt, (36, 45))     # (N, K) percent
    summarize(nme, "val", unit="nme", fr_threshold=NME_FR_PERCENT, auc_threshold=NME_AUC_PERCENT)
    print(format_table(per_landmark_table(err)))    # one line per landmark
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SDR_RADII_MM = (2.0, 2.5, 3.0, 4.0)
NME_FR_PERCENT = 10.0  # 300-W failure threshold on per-image NME
NME_AUC_PERCENT = 8.0  # 300-W CED/AUC cut-off on per-image NME (AUC_0.08)
UNITS = ("mm", "nme")
NAN = float("nan")


def radial_errors_mm(pred: Tensor, gt: Tensor, spacing_mm: Tensor) -> Tensor:
    """Euclidean distance per landmark in mm. pred, gt: (N, K, 2) pixels; spacing_mm: (N,) -> (N, K)."""
    return torch.linalg.vector_norm(pred - gt, dim=-1) * spacing_mm[:, None]


def normalized_errors(pred: Tensor, gt: Tensor, pair: tuple[int, int]) -> Tensor:
    """NME per landmark in percent (300-W): 100 · ||pred_ik - gt_ik|| / ||gt_ia - gt_ib||, (a, b) = pair.

    pred, gt: (N, K, 2) in any common unit (pixels); pair: landmark indices of the normaliser, for
    300-W the outer eye corners (36, 45), the inter-ocular distance. Returns (N, K). An image whose
    normaliser is NaN (a or b not annotated) or 0 gets NaN errors; a NaN gt row gives a NaN entry.
    """
    a, b = pair
    d = torch.linalg.vector_norm(gt[:, a] - gt[:, b], dim=-1)  # (N,)
    d = torch.where(torch.isfinite(d) & (d > 0), d, torch.full_like(d, NAN))
    return 100.0 * torch.linalg.vector_norm(pred - gt, dim=-1) / d[:, None]


def per_image(errors: Tensor) -> Tensor:
    """Per-image mean error: mean over the annotated landmarks of each image. (N, K) -> (N,).

    Non-finite entries are ignored; an image with no finite entry gets NaN.
    """
    e = errors.double()
    ok = torch.isfinite(e)
    n = ok.sum(dim=1)
    total = torch.where(ok, e, torch.zeros_like(e)).sum(dim=1)
    return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, NAN))


def _finite(errors: Tensor) -> Tensor:
    """The finite entries of any-shaped errors, flattened to (M,), float64."""
    e = errors.double().flatten()
    return e[torch.isfinite(e)]


def _percent(mask: Tensor) -> float:
    """100 · mean of a boolean (M,); NaN when M = 0."""
    return 100.0 * mask.double().mean().item() if mask.numel() else NAN


def _mean_sd(e: Tensor) -> tuple[float, float]:
    """Mean and population SD of finite (M,); NaN, NaN when M = 0."""
    if not e.numel():
        return NAN, NAN
    return e.mean().item(), e.std(unbiased=False).item()


def _check_threshold(name: str, threshold: float) -> None:
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"{name}: threshold must be a finite number > 0, got {threshold!r}")


def failure_rate(per_image: Tensor, threshold: float) -> float:
    """Failure rate in percent (300-W): 100 · #{e_i > threshold} / #{finite e_i}.

    per_image: (N,) errors (usually per-image NME in percent); any shape is flattened. Non-finite
    entries are ignored; NaN if none is finite. An error equal to the threshold is not a failure.
    """
    return _percent(_finite(per_image) > threshold)


def ced(errors_1d: Tensor, threshold: float, points: int = 101) -> tuple[Tensor, Tensor]:
    """Cumulative error distribution on [0, threshold]: x = linspace(0, threshold, points),
    y(x) = #{e_i <= x} / #{finite e_i} in [0, 1].

    errors_1d: (M,) (any shape is flattened); non-finite entries ignored. Returns x, y: (points,)
    float64; y is all NaN when no entry is finite. For radial errors in mm this is the SDR curve / 100.
    """
    _check_threshold("ced", threshold)
    e = _finite(errors_1d)
    x = torch.linspace(0.0, threshold, points, dtype=torch.float64)
    if not e.numel():
        return x, torch.full_like(x, NAN)
    y = (e[None, :] <= x[:, None]).double().mean(dim=1)
    return x, y


def auc(errors_1d: Tensor, threshold: float) -> float:
    """Area under the CED on [0, T] divided by T, exactly: ∫_0^T F(x) dx / T = mean_i max(0, T - e_i) / T.

    errors_1d: (M,) errors >= 0 (any shape is flattened); non-finite entries ignored; T = threshold.
    Returns a float in [0, 1] (1: every error is 0; 0: every error is >= T), NaN if none is finite.
    """
    _check_threshold("auc", threshold)
    e = _finite(errors_1d).clamp(min=0.0)
    if not e.numel():
        return NAN
    return ((threshold - e).clamp(min=0.0).mean() / threshold).item()


def _radius_name(r: float) -> str:
    return f"{r:g}mm"  # 2.0 -> "2mm", 2.5 -> "2.5mm"


def _unit_check(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unit: unknown {unit!r}; choose one of {list(UNITS)}")


def summarize(
    errors: Tensor,
    split: str,
    unit: str = "mm",
    fr_threshold: float | None = None,
    auc_threshold: float | None = None,
) -> dict[str, float]:
    """Everything a split reports, from (N, K) errors with NaN where a landmark is not annotated.

    unit "mm" (ISBI 2015), errors are radial errors in mm, statistics over all finite landmark errors:
        split/mre_mm, split/mre_sd_mm (population SD), split/sdr_<r>mm (percent, e <= r) for r in
        SDR_RADII_MM; with fr_threshold t: split/fr = percent of errors > t (= 100 - SDR at t);
        with auc_threshold T: split/auc = auc(errors, T).
    unit "nme" (300-W), errors are per-landmark NME in percent, statistics over per-image NME m_i:
        split/nme = mean m_i, split/nme_sd (population SD); with fr_threshold t:
        split/fr = failure_rate(m, t) (300-W: NME_FR_PERCENT); with auc_threshold T:
        split/auc = auc(m, T) (300-W: NME_AUC_PERCENT).
    A threshold left None leaves its metric out. With no finite entry every value is NaN.
    """
    _unit_check(unit)
    if unit == "mm":
        e = _finite(errors)
        mre, sd = _mean_sd(e)
        out = {f"{split}/mre_mm": mre, f"{split}/mre_sd_mm": sd}
        for r in SDR_RADII_MM:
            out[f"{split}/sdr_{_radius_name(r)}"] = _percent(e <= r)
        if fr_threshold is not None:
            out[f"{split}/fr"] = failure_rate(e, fr_threshold)
    else:
        e = _finite(per_image(errors))
        nme, sd = _mean_sd(e)
        out = {f"{split}/nme": nme, f"{split}/nme_sd": sd}
        if fr_threshold is not None:
            out[f"{split}/fr"] = failure_rate(e, fr_threshold)
    if auc_threshold is not None:
        out[f"{split}/auc"] = auc(e, auc_threshold)
    return out


def per_landmark_table(errors: Tensor, unit: str = "mm") -> list[dict]:
    """One row per landmark of (N, K) errors, over that landmark's finite errors across images.

    Row: {"landmark": k (0-based), "n": count of finite errors, "mean", "sd" (population), "median"
    (midpoint of the two middle values when n is even), "max"}, and for unit "mm" also
    "sdr_<r>mm" (percent) for r in SDR_RADII_MM. Floats; NaN where n = 0.
    """
    _unit_check(unit)
    e_all = errors.double()
    rows = []
    for k in range(e_all.shape[1]):
        e = _finite(e_all[:, k])
        mean, sd = _mean_sd(e)
        row = {
            "landmark": k,
            "n": int(e.numel()),
            "mean": mean,
            "sd": sd,
            "median": e.quantile(0.5).item() if e.numel() else NAN,
            "max": e.max().item() if e.numel() else NAN,
        }
        if unit == "mm":
            for r in SDR_RADII_MM:
                row[f"sdr_{_radius_name(r)}"] = _percent(e <= r)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Fixed-width text of per_landmark_table rows: a header line, then one line per row.

    Columns are the first row's keys in order, right-aligned; floats with 2 decimals. "" for no rows.
    """
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cells = [[cell(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def reported_metrics(unit: str = "mm") -> list[str]:
    """Every metric name the trainer reports each epoch for a dataset of this unit: what a spec's
    objectives may name. "mm": val/mre_mm, val/mre_sd_mm, val/sdr_<r>mm, val/fr, val/auc;
    "nme": val/nme, val/nme_sd, val/fr, val/auc; both also train/loss, val/loss and cost/*.
    """
    _unit_check(unit)
    if unit == "mm":
        per_split = ["mre_mm", "mre_sd_mm"] + [f"sdr_{_radius_name(r)}" for r in SDR_RADII_MM]
    else:
        per_split = ["nme", "nme_sd"]
    return (
        ["train/loss", "val/loss"]
        + [f"val/{m}" for m in per_split + ["fr", "auc"]]
        + ["cost/params_m", "cost/gflops", "cost/latency_ms", "cost/epoch_s", "cost/workers"]
    )


def all_metric_names() -> list[str]:
    """The union of reported_metrics over every unit, in first-seen order (a spec is validated
    before its dataset, hence its unit, is known)."""
    return list(dict.fromkeys(n for unit in UNITS for n in reported_metrics(unit)))
