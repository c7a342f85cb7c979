"""One trial's pictures: σ per landmark over epochs (Adaloss), the CED of its best epoch, and
predictions and heatmaps over a few validation images.

    sigma_png(sigma, out / "sigma.png", "trial a1b2c3d4", names=landmark_names("isbi2015", 19))
    sigma_png(sigma, out / "sigma.png", "trial a1b2c3d4", groups=FACE68_REGIONS)             # 68 face points
    ced_png(errors, "nme", 8.0, out / "ced.png", "trial a1b2c3d4")      # errors: (N, K)
    overlays_png(images, gt, pred, out / "overlays.png", "val, epoch 40", errors=errors)
    heatmaps_png(images, heatmaps, 4, out / "heatmaps.png", "val, epoch 40")

Coordinates: landmarks are (x, y) in input pixels, centre of pixel column j at x = j (imshow's default
extent, pixel j spans [j - 0.5, j + 0.5]). A heatmap at output stride s has pixel u centred at input
coordinate (u + 0.5)·s - 0.5.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D

from dashboards.plots import (
    CED_PNG_SIZE,
    CED_X_CAP,
    GT_COLOR,
    LINK_COLOR,
    OVERLAY_GAP_PX,
    OVERLAY_HEADER_PX,
    OVERLAY_MAX_IMAGES,
    OVERLAY_MIN_W,
    OVERLAY_PANEL_W,
    OVERLAY_TITLE_PX,
    PRED_COLOR,
    SIGMA_PNG_SIZE,
    SIGMA_STYLES,
    figure,
    plt,
    prepare_path,
    save,
)
from trainables import metrics

# ------------------------------------------------------------------------------------------------- σ


def landmark_styles(k: int) -> list[tuple[tuple[float, float, float], str]]:
    """(RGB colour, matplotlib line style) of landmarks 0..k-1 in the σ plot.

    The 20 colours of tab20, its 10 strong ones first, then its 10 light ones (k ≤ 10 is tab10);
    landmark n gets colour n mod 20 in style SIGMA_STYLES[n // 20] (solid, dashed, dotted,
    dash-dot), so no two of the first 80 share both colour and style. Beyond 80 the rounds repeat.
    """
    tab20 = plt.get_cmap("tab20").colors
    palette = [tuple(c) for c in tab20[0::2] + tab20[1::2]]
    return [(palette[n % 20], SIGMA_STYLES[(n // 20) % len(SIGMA_STYLES)]) for n in range(k)]


def sigma_png(
    sigma: pd.DataFrame, path, title: str, groups: dict[str, list[int]] | None = None, names: list[str] | None = None
) -> Path:
    """σ per landmark over epochs (the adaloss paper, figs 6 and 7), SIGMA_PNG_SIZE px.

    sigma: index = epoch (1-based), one column per landmark index k (0..K-1), σ in input pixels.
    Without groups: one line per landmark in landmark_styles (tab20 colours, a new line style every
    20 landmarks), a legend beside the plot, each entry `k name` with names[k] (e.g. the dataset's
    `trainables.data.landmark_names`), else `landmark k`. With groups (region → landmark indices,
    e.g. FACE68_REGIONS): one line per region, the mean σ of its landmarks, in a shaded min–max band.
    """
    path = prepare_path(path)
    fig = figure(SIGMA_PNG_SIZE)
    w, h = fig.bbox.width, fig.bbox.height
    ax = fig.add_axes((80 / w, 65 / h, 1 - 260 / w, 1 - 120 / h))
    ax.set_title(title, fontsize=14, fontweight="bold", loc="left")
    ax.set_xlabel("epoch")
    ax.set_ylabel("target/sigma (input px)")
    ax.grid(alpha=0.3)
    sigma = sigma.sort_index()
    epochs = np.asarray(sigma.index, dtype=float)
    marker = "o" if len(epochs) <= 1 else None  # a single epoch is a point, not a line
    cols = {int(c): c for c in sigma.columns}
    if sigma.empty or not np.isfinite(sigma.to_numpy(dtype=float)).any():
        ax.text(
            0.5, 0.5, "no σ recorded yet", transform=ax.transAxes, ha="center", va="center", fontsize=16, color="#666"
        )
    elif groups:
        colors = plt.get_cmap("tab10")
        for g, (name, idx) in enumerate(groups.items()):
            present = [cols[k] for k in idx if k in cols]
            if not present:
                continue
            block = sigma[present].to_numpy(dtype=float)  # (epochs, k in region)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN epoch stays NaN
                mean, lo, hi = np.nanmean(block, 1), np.nanmin(block, 1), np.nanmax(block, 1)
            c = colors(g % 10)
            ax.fill_between(epochs, lo, hi, color=c, alpha=0.18, lw=0)
            ax.plot(epochs, mean, color=c, lw=2, marker=marker, label=f"{name} ({len(present)})")
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=10,
            title="region\n(mean, min–max)",
            title_fontsize=9,
            frameon=False,
            alignment="left",
        )
    else:
        keys = sorted(cols)
        styles = landmark_styles(max(keys) + 1)
        for k in keys:
            color, style = styles[k]
            label = f"{k} {names[k]}" if names and k < len(names) else f"landmark {k}"
            ax.plot(
                epochs,
                sigma[cols[k]].to_numpy(dtype=float),
                color=color,
                ls=style,
                lw=1.6,
                alpha=0.9,
                marker=marker,
                label=label,
            )
        _beside(fig, ax, len(keys), "landmark" if names else None)
    if len(epochs):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save(fig, path)


def _beside(fig, ax, n: int, title: str | None) -> None:
    """The axes' legend at the figure's right edge, in as many columns as its n entries need
    (25 a column), the axes narrowed to leave it room."""
    w, h = fig.bbox.width, fig.bbox.height
    ncol = max(1, math.ceil(n / 25))
    fontsize = 9 if n <= 20 else 8 if ncol == 1 else 7
    legend = fig.legend(
        *ax.get_legend_handles_labels(),
        loc="upper right",
        bbox_to_anchor=(1 - 8 / w, 1 - 50 / h),
        ncol=ncol,
        fontsize=fontsize,
        frameon=False,
        title=title,
        title_fontsize=9,
        alignment="left",
        handlelength=2.6,
        columnspacing=1.0,
        labelspacing=0.3,
    )
    width = legend.get_window_extent(fig.canvas.get_renderer()).width
    ax.set_position((80 / w, 65 / h, max(0.3, 1 - (80 + 24 + 8 + width) / w), 1 - 120 / h))


# ----------------------------------------------------------------------------------------------- CED


def ced_errors(errors: np.ndarray, unit: str) -> np.ndarray:
    """The finite errors a CED is over, (M,) float64. errors: (N, K), NaN where not annotated.

    unit "mm": every finite landmark error e_ik; "nme": per-image means over each row's finite entries
    (trainables.metrics.per_image; an image with none is left out).
    """
    if unit not in ("mm", "nme"):
        raise ValueError(f"unit: unknown {unit!r}; choose one of ['mm', 'nme']")
    e = torch.as_tensor(np.asarray(errors, dtype=np.float64))
    e = e[:, None] if e.ndim == 1 else e
    flat = (e if unit == "mm" else metrics.per_image(e)).flatten()
    return flat[torch.isfinite(flat)].numpy()


def ced_summary(errors: np.ndarray, unit: str, threshold: float) -> dict[str, float]:
    """What ced_png writes: {"n": M, "mean": mean e_i, "auc": trainables.metrics.auc} over ced_errors."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"ced: threshold must be a finite number > 0, got {threshold!r}")
    e = ced_errors(errors, unit)
    return {
        "n": int(e.size),
        "mean": float(e.mean()) if e.size else math.nan,
        "auc": metrics.auc(torch.from_numpy(e), threshold),
    }


def ced_png(errors: np.ndarray, unit: str, threshold: float, path, title: str) -> Path:
    """Cumulative error distribution, CED_PNG_SIZE px. errors: (N, K), NaN = not annotated.

    unit "mm": over all finite landmark errors (radial error, mm); "nme": over per-image NME (%).
    x from 0 to max(1.5·T, 95th percentile), at most CED_X_CAP·T; a dashed line at T; the shaded area
    is the AUC@T (exact: mean_i max(0, T - e_i) / T, see ced_summary).
    """
    path = prepare_path(path)
    s = ced_summary(errors, unit, threshold)
    e = np.sort(ced_errors(errors, unit))
    mm = unit == "mm"
    sym = "mm" if mm else "%"
    fig = figure(CED_PNG_SIZE)
    w, h = fig.bbox.width, fig.bbox.height
    ax = fig.add_axes((80 / w, 70 / h, 1 - 110 / w, 1 - 120 / h))
    ax.set_title(title, fontsize=14, fontweight="bold", loc="left")
    ax.set_xlabel("radial error (mm)" if mm else "NME (%)")
    ax.set_ylabel("fraction of landmarks" if mm else "fraction of images")
    xmax = 1.5 * threshold
    if e.size:
        xmax = min(max(xmax, float(np.percentile(e, 95))), CED_X_CAP * threshold)
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if e.size:
        x = np.concatenate([[0.0], e, [max(xmax, e[-1])]])
        y = np.concatenate([[0.0], np.arange(1, e.size + 1) / e.size, [1.0]])
        ax.step(x, y, where="post", color="#1f4e79", lw=2, label="CED")
        under = x <= threshold
        xs = np.concatenate([x[under], [threshold]])
        ys = np.concatenate([y[under], [y[under][-1]]])
        ax.fill_between(xs, ys, step="post", color="#1f4e79", alpha=0.15, lw=0, label=f"AUC@{threshold:g} {sym}")
    else:
        ax.text(
            0.5, 0.5, "no finite errors", transform=ax.transAxes, ha="center", va="center", fontsize=16, color="#666"
        )
    ax.axvline(threshold, color="#c0392b", ls="--", lw=1.5, label=f"threshold {threshold:g} {sym}")
    what = "landmarks" if mm else "images"
    lines = [f"AUC@{threshold:g} {sym} = {s['auc']:.3f}", f"mean = {s['mean']:.3g} {sym}", f"n = {s['n']} {what}"]
    beyond = int((e > xmax).sum())
    if beyond:
        lines.append(f"{100 * beyond / e.size:.0f} % beyond {xmax:g} {sym}")
    ax.text(
        0.97,
        0.05,
        "\n".join(lines),
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=11,
        family="DejaVu Sans Mono",
        bbox=dict(boxstyle="round,pad=0.4", fc="white", ec="#999"),
    )
    ax.legend(loc="upper left", fontsize=10, framealpha=0.9)
    return save(fig, path)


# --------------------------------------------------------------------------------- image panels


def _grid(n: int) -> tuple[int, int]:
    """(rows, cols): one row up to 4 images, two rows up to OVERLAY_MAX_IMAGES."""
    n = max(1, n)
    return (1, n) if n <= 4 else (2, math.ceil(n / 2))


def _panel_h(height: int, width: int) -> int:
    return max(1, round(OVERLAY_PANEL_W * height / width))


def _row_w(cols: int) -> int:
    return OVERLAY_PANEL_W * cols + OVERLAY_GAP_PX * (cols - 1)


def overlay_png_size(n: int, height: int, width: int) -> tuple[int, int]:
    """(width, height) px of overlays_png/heatmaps_png for n images of height × width pixels.

    cols = n (n ≤ 4) or ceil(n / 2) (2 rows); each panel is OVERLAY_PANEL_W × round(300·H / W) px
    under an OVERLAY_TITLE_PX title band, panels OVERLAY_GAP_PX apart, under an OVERLAY_HEADER_PX header:
    (max(620, 300·cols + 8·(cols - 1)), 64 + rows·(round(300·H / W) + 28)).
    """
    rows, cols = _grid(n)
    return (max(OVERLAY_MIN_W, _row_w(cols)), OVERLAY_HEADER_PX + rows * (_panel_h(height, width) + OVERLAY_TITLE_PX))


def _panels(images: np.ndarray, title: str, what: str) -> tuple[plt.Figure, list]:
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"{what}: images must be (n, H, W) greyscale, got shape {images.shape}")
    n, H, W = images.shape
    if n > OVERLAY_MAX_IMAGES:
        raise ValueError(f"{what}: at most {OVERLAY_MAX_IMAGES} images, got {n}; pass images[:{OVERLAY_MAX_IMAGES}]")
    rows, cols = _grid(n)
    fw, fh = overlay_png_size(n, H, W)
    ph = _panel_h(H, W)
    fig = figure((fw, fh))
    fig.text(8 / fw, 1 - 10 / fh, title, ha="left", va="top", fontsize=13, fontweight="bold")
    axes = []
    for i in range(n):
        r, c = divmod(i, cols)
        top = OVERLAY_HEADER_PX + r * (ph + OVERLAY_TITLE_PX) + OVERLAY_TITLE_PX
        left = (fw - _row_w(cols)) // 2 + c * (OVERLAY_PANEL_W + OVERLAY_GAP_PX)
        ax = fig.add_axes((left / fw, 1 - (top + ph) / fh, OVERLAY_PANEL_W / fw, ph / fh))
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_aspect("auto")  # the panel already has the image's aspect ratio (to a pixel)
        ax.set_axis_off()
        axes.append(ax)
    if n == 0:
        fig.text(0.5, 0.45, "no images", ha="center", va="center", fontsize=14, color="#666")
    return fig, axes


def overlays_png(
    images: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    path,
    title: str,
    errors: np.ndarray | None = None,
    unit: str = "mm",
) -> Path:
    """Ground truth (green circles) and predictions (red crosses) on the images, overlay_png_size px.

    images: (n, H, W) uint8, n ≤ 8; gt, pred: (n, K, 2) (x, y) input pixels, pixel centres at integers;
    a NaN row is a missing landmark (its marker and link are not drawn). errors: (n, K) in mm or NME %
    (unit), NaN ignored; each panel's title is then the image's mean error.
    """
    if unit not in ("mm", "nme"):
        raise ValueError(f"overlays_png: unit {unit!r}; choose one of ['mm', 'nme']")
    path = prepare_path(path)
    fig, axes = _panels(images, title, "overlays_png")
    gt, pred = np.asarray(gt, dtype=float), np.asarray(pred, dtype=float)
    small = gt.shape[1] > 30  # 68 face points need smaller markers than 19 cephalometric ones
    for i, ax in enumerate(axes):
        g, q = gt[i], pred[i]
        ok_g, ok_q = np.isfinite(g).all(1), np.isfinite(q).all(1)
        both = ok_g & ok_q
        for (x0, y0), (x1, y1) in zip(g[both], q[both]):
            ax.plot([x0, x1], [y0, y1], color=LINK_COLOR, lw=0.9, alpha=0.9)
        ax.plot(g[ok_g, 0], g[ok_g, 1], "o", ms=4 if small else 7, mfc="none", mec=GT_COLOR, mew=1.3, ls="")
        ax.plot(q[ok_q, 0], q[ok_q, 1], "x", ms=4 if small else 7, color=PRED_COLOR, mew=1.3, ls="")
        label = f"image {i + 1}"
        if errors is not None:
            m = ced_errors(np.asarray(errors, dtype=float)[i : i + 1], "nme")  # the row's mean, in either unit
            label = (f"mean {m[0]:.2f} mm" if unit == "mm" else f"NME {m[0]:.1f} %") if m.size else "none annotated"
        ax.set_title(label, fontsize=10, pad=4)
    handles = [
        Line2D([], [], marker="o", ls="", mfc="none", mec=GT_COLOR, mew=1.5, ms=8, label="ground truth"),
        Line2D([], [], marker="x", ls="", color=PRED_COLOR, mew=1.5, ms=8, label="prediction"),
        Line2D([], [], color=LINK_COLOR, lw=1.5, label="error"),
    ]
    fh = fig.bbox.height
    fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0, 1 - 32 / fh),
        ncol=3,
        fontsize=9,
        frameon=False,
        handletextpad=0.3,
        columnspacing=1.0,
        borderaxespad=0.2,
        facecolor="white",
    )
    return save(fig, path)


def heatmaps_png(images: np.ndarray, heatmaps: np.ndarray, stride: int, path, title: str) -> Path:
    """Predicted heatmaps over the images, overlay_png_size px (same panels as overlays_png).

    images: (n, H, W) uint8; heatmaps: (n, h, w) in [0, 1] at output stride `stride`: heatmap pixel u
    is centred at input (u + 0.5)·stride - 0.5, so it covers [-0.5, w·stride - 0.5] × [-0.5, h·stride - 0.5].
    The heatmap's opacity is 0.8·√value, so the image stays visible where the heatmap is 0.
    """
    path = prepare_path(path)
    fig, axes = _panels(images, title, "heatmaps_png")
    hm = np.nan_to_num(np.asarray(heatmaps, dtype=float), nan=0.0).clip(0.0, 1.0)
    for i, ax in enumerate(axes):
        hh, ww = hm[i].shape
        # Opacity √h: weak secondary peaks stay visible, zero stays transparent. Bilinear keeps the
        # peak's value (Agg's "bicubic" is a smoothing B-spline that dims a one-pixel peak).
        ax.imshow(
            hm[i],
            cmap="inferno",
            vmin=0,
            vmax=1,
            alpha=0.8 * np.sqrt(hm[i]),
            interpolation="bilinear",
            extent=(-0.5, ww * stride - 0.5, hh * stride - 0.5, -0.5),
        )
        H, W = np.asarray(images).shape[1:]
        ax.set_xlim(-0.5, W - 0.5)  # imshow of the heatmap widened the limits to its own extent
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_aspect("auto")
        ax.set_title(f"image {i + 1}  (max {hm[i].max():.2f})", fontsize=10, pad=4)
    fw, fh = fig.bbox.width, fig.bbox.height
    fig.text(
        8 / fw,
        1 - 38 / fh,
        f"max over landmarks of normalised heatmaps, stride {stride}",
        ha="left",
        va="top",
        fontsize=9,
        color="#444",
    )
    return save(fig, path)
