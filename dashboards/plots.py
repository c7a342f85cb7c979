"""What every picture shares: matplotlib set-up (Agg, exact pixel sizes), the sizes and colours,
and small formatting helpers. The pictures themselves are in pareto_page.py and pareto_image.py (the
comparison, both drawing pareto_view.ParetoView), importance.py (importance bars) and trial_plots.py
(one trial); all draw from plain tables and arrays (no MLflow, no Ray).

PNGs come from matplotlib (Agg) at an exact pixel size that the `*_size` functions and constants
below state; the Pareto comparison is also an interactive, self-contained plotly HTML page (plotly.js
embedded: clusters have no internet, and MLflow shows HTML artefacts in an iframe).

    objectives = [("val/mre_mm", "min"), ("cost/gflops", "min")]
    html = pareto_html(table, objectives, searched=["optim.lr", "target.schedule"], title="farnet")
    pareto_png(table, objectives, "farnet", out / "pareto.png")        # 1000×750 px
    sigma_png(sigma, out / "sigma.png", "trial a1b2c3d4", groups=FACE68_REGIONS)
    ced_png(errors, "nme", 8.0, out / "ced.png", "trial a1b2c3d4")      # errors: (N, K)
    overlays_png(images, gt, pred, out / "overlays.png", "val, epoch 40", errors=errors)
    heatmaps_png(images, heatmaps, 4, out / "heatmaps.png", "val, epoch 40")
    importance_png({"optim.lr": 0.61, "target.schedule": 0.22}, out / "importance.png", "farnet")

Names are the study's one vocabulary: metrics like `val/mre_mm`, params like `optim.lr` label the
axes and the hover text exactly as the YAML and MLflow spell them. An objective is (metric, mode),
mode "min" or "max".

Coordinates: landmarks are (x, y) in input pixels, centre of pixel column j at x = j (imshow's default
extent, pixel j spans [j - 0.5, j + 0.5]). A heatmap at output stride s has pixel u centred at input
coordinate (u + 0.5)·s - 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: the driver has no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 100  # every PNG is figsize × DPI pixels, saved without bbox_inches="tight" (it changes the size)

# Pareto pictures: the front in one warm colour, the other ranks on a cool sequential scale.
FRONT_COLOR = "#e4572e"
FRONT_EDGE = "#7a1f08"  # the front's outline and label colour
ERROR_COLOR = "#8a8a8a"  # 95 % intervals (error bars), behind the points
OVERLAP_NAME = "interval overlaps the front's"  # a hollow FRONT_EDGE marker: not told apart from the front
COST_FRONT_COLOR = "#444444"  # one objective: the trials no cheaper trial beats
RANK_COLORS = ("#1f4e79", "#9fb8cf")  # rank 2 … worst rank
EMPTY_PARETO_TEXT = "no trial has all objectives yet"
PARETO_PNG_SIZE = (1000, 750)  # 1 or 2 objectives
PARETO_PANEL_PX = 400  # 3+ objectives: one square panel per objective pair (lower triangle)
MAX_FRONT_LABELS = 20  # recipes written next to front points up to this many distinct points
STOPPED_SYMBOL = ("triangle-down", "v")  # a trial ASHA stopped early (plotly, matplotlib): ranked on what it reached
UNRANKED_COLOR = "#7f7f7f"  # unranked trials that have every objective (running, failed, …): hollow markers
COST_AXES = ("cost/gflops", "cost/epoch_s")  # one objective is drawn against the first that differs between trials
RECIPE_MAX_CHARS = 48  # a point's label: its searched values, cut here with "…"

SIGMA_PNG_SIZE = (1000, 600)
SIGMA_STYLES = ("-", "--", ":", "-.")  # K > 20 landmarks: the 20 tab20 colours again, each round in the next style
# 300-W 68-point layout (iBUG), 0-based landmark indices per face region.
FACE68_REGIONS: dict[str, list[int]] = {
    "jaw": list(range(0, 17)),
    "eyebrows": list(range(17, 27)),
    "nose": list(range(27, 36)),
    "eyes": list(range(36, 48)),
    "mouth": list(range(48, 68)),
}

CED_PNG_SIZE = (800, 600)
CED_X_CAP = 5.0  # the CED x-axis ends at most at 5 × threshold, however bad the tail

OVERLAY_PANEL_W = 300  # px per image panel; the height keeps the image's aspect ratio
OVERLAY_TITLE_PX = 28  # per-panel title band
OVERLAY_HEADER_PX = 64  # figure title and legend
OVERLAY_GAP_PX = 8  # white between neighbouring panels
OVERLAY_MIN_W = 620  # room for the title and legend over one or two panels (the panels are centred)
OVERLAY_MAX_IMAGES = 8
GT_COLOR, PRED_COLOR, LINK_COLOR = "#00e060", "#ff2020", "#ffe600"

IMPORTANCE_PNG_W = 800
IMPORTANCE_MAX_BARS = 30  # taller lists keep the 30 largest: 200 + 40·30 = 1400 px at most


# ---------------------------------------------------------------------------------------------- shared


def prepare_path(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def figure(size_px: tuple[int, int], **kw) -> plt.Figure:
    w, h = size_px
    return plt.figure(figsize=(w / DPI, h / DPI), dpi=DPI, **kw)


def save(fig: plt.Figure, path: Path) -> Path:
    try:
        fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    finally:
        plt.close(fig)
    return path


def fmt(v) -> str:
    """A table cell for hover text and labels: 4 significant digits, '—' for inactive/missing."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def check_objectives(objectives: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    objectives = [(str(m), str(mode)) for m, mode in objectives]
    if not objectives:
        raise ValueError("objectives: empty; give at least one (metric, mode), e.g. ('val/mre_mm', 'min')")
    for metric, mode in objectives:
        if mode not in ("min", "max"):
            raise ValueError(f"objectives: {metric!r} has mode {mode!r}; use 'min' or 'max'")
    return objectives


def axis_label(metric: str, mode: str, axis: str | None = None) -> str:
    """`val/mre_mm (min, ↓ better)`; the arrow points to better along that axis ("x", "y"), none for None."""
    arrow = {
        ("x", "min"): "← better",
        ("x", "max"): "better →",
        ("y", "min"): "↓ better",
        ("y", "max"): "↑ better",
    }.get((axis, mode))
    return f"{metric} ({mode}, {arrow})" if arrow else f"{metric} ({mode})"


def short_number(v: float) -> str:
    """A searched value, short: 3e-4, 2.5e-5, 0.95, 12, 1.5e4 (two significant digits in powers of ten)."""
    v = float(v)
    if v == int(v) and abs(v) < 1e4:
        return str(int(v))
    if abs(v) < 1e-2 or abs(v) >= 1e4:
        mantissa, exp = f"{v:.1e}".split("e")
        return f"{mantissa.removesuffix('.0')}e{int(exp)}"
    return f"{v:.3g}"


def recipe(row, searched: Sequence[str]) -> str:
    """What a trial tried, short: its searched values in sampling order, text choices bare and the
    rest named by the last part of their path: `adaloss, lr 3e-4`, `vgg16, refine yes, alpha 40`.
    An inactive (conditional) param is left out; '' when nothing was searched."""
    names = _short_names(searched)
    words, named = [], []
    for path in searched:
        v = row.get(path) if hasattr(row, "get") else row[path]
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, (bool, np.bool_)):
            named.append(f"{names[path]} {'yes' if v else 'no'}")
        elif isinstance(v, (int, float, np.integer, np.floating)):
            named.append(f"{names[path]} {short_number(v)}")
        elif isinstance(v, (list, tuple)):
            named.append(f"{names[path]} {'×'.join(str(x) for x in v)}")
        else:
            words.append(str(v))
    text = ", ".join(words + named)
    return text if len(text) <= RECIPE_MAX_CHARS else text[: RECIPE_MAX_CHARS - 1] + "…"


def _short_names(paths: Sequence[str]) -> dict[str, str]:
    """Each dotted path by its last part, or its last two where two paths share the last."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: (tail if last.count(tail) == 1 else ".".join(p.split(".")[-2:])) for p, tail in zip(paths, last)}
