"""Study and trial pictures, drawn on the driver from plain tables and arrays (no MLflow, no Ray).

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

import html as html_lib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: the driver has no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from dashboards.pareto import describe_excluded  # noqa: E402

DPI = 100  # every PNG is figsize × DPI pixels, saved without bbox_inches="tight" (it changes the size)

# Pareto pictures: the front in one warm colour, the other ranks on a cool sequential scale.
FRONT_COLOR = "#e4572e"
RANK_COLORS = ("#1f4e79", "#9fb8cf")  # rank 2 … worst rank
EMPTY_PARETO_TEXT = "no trial has all objectives yet"
PARETO_PNG_SIZE = (1000, 750)  # 1 or 2 objectives
PARETO_PANEL_PX = 400  # 3+ objectives: one square panel per objective pair (lower triangle)
MAX_FRONT_LABELS = 20  # trial ids written next to front points up to this many distinct points

SIGMA_PNG_SIZE = (1000, 600)
SIGMA_LEGEND_MAX = 20  # one legend entry per landmark up to this K, a colourbar above
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


def _prepare_path(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _figure(size_px: tuple[int, int], **kw) -> plt.Figure:
    w, h = size_px
    return plt.figure(figsize=(w / DPI, h / DPI), dpi=DPI, **kw)


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    finally:
        plt.close(fig)
    return path


def _fmt(v) -> str:
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


def _check_objectives(objectives: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    objectives = [(str(m), str(mode)) for m, mode in objectives]
    if not objectives:
        raise ValueError("objectives: empty; give at least one (metric, mode), e.g. ('val/mre_mm', 'min')")
    for metric, mode in objectives:
        if mode not in ("min", "max"):
            raise ValueError(f"objectives: {metric!r} has mode {mode!r}; use 'min' or 'max'")
    return objectives


def _axis_label(metric: str, mode: str, axis: str | None = None) -> str:
    """`val/mre_mm (min, ↓ better)`; the arrow points to better along that axis ("x", "y"), none for None."""
    arrow = {("x", "min"): "← better", ("x", "max"): "better →",
             ("y", "min"): "↓ better", ("y", "max"): "↑ better"}.get((axis, mode))
    return f"{metric} ({mode}, {arrow})" if arrow else f"{metric} ({mode})"


# ---------------------------------------------------------------------------------------- Pareto data


class _Pareto:
    """The ranked trials of a study table, best first, and the counts for the subtitle."""

    def __init__(self, table: pd.DataFrame, objectives: list[tuple[str, str]]):
        for col in ("trial", "pareto.rank"):
            if col not in table.columns:
                raise ValueError(f"pareto table: no {col!r} column; have {list(table.columns)}")
        self.objectives = objectives
        self.metrics = [m for m, _ in objectives]
        values = pd.DataFrame({m: pd.to_numeric(table[m], errors="coerce") if m in table else np.nan
                               for m in self.metrics}, index=table.index)
        rank = pd.to_numeric(table["pareto.rank"], errors="coerce")
        # A rank with a non-finite objective cannot be placed on an axis (rank_table never gives one).
        placed = rank.notna() & np.isfinite(values.to_numpy(dtype=float)).all(axis=1)
        ranked = table[placed].copy()
        ranked["pareto.rank"] = rank[placed].astype(int)
        for m in self.metrics:
            ranked[m] = values.loc[placed, m].astype(float)
        # Best first: by rank, then by the first objective in its better direction.
        m0, mode0 = objectives[0]
        ranked = ranked.sort_values(["pareto.rank", m0], ascending=[True, mode0 == "min"], kind="stable")
        self.ranked = ranked.reset_index(drop=True)
        self.front = self.ranked[self.ranked["pareto.rank"] == 1]
        self.others = self.ranked[self.ranked["pareto.rank"] > 1]
        self.max_rank = int(self.ranked["pareto.rank"].max()) if len(self.ranked) else 0
        n, nf = len(self.ranked), len(self.front)
        self.subtitle = f"{n} trial{'s' if n != 1 else ''} ranked, front of {nf}"
        unranked = describe_excluded(table, objectives)  # the wording the CLI prints
        if unranked:
            self.subtitle += f"; {unranked}"

    def hover(self, rows: pd.DataFrame, searched: Sequence[str]) -> list[str]:
        out = []
        for _, r in rows.iterrows():
            lines = [f"<b>trial {html_lib.escape(str(r['trial']))}</b>",
                     f"status: {html_lib.escape(_fmt(r.get('status')))}",
                     f"pareto.rank: {int(r['pareto.rank'])}"]
            lines += [f"{m}: {_fmt(r[m])}" for m in self.metrics]
            lines += [f"{p}: {html_lib.escape(_fmt(r.get(p)))}" for p in searched]
            out.append("<br>".join(lines))
        return out


def _rank_colorscale() -> list[list]:
    return [[0.0, RANK_COLORS[0]], [1.0, RANK_COLORS[1]]]


def _rank_range(p: _Pareto) -> tuple[int, int]:
    return 2, max(3, p.max_rank)  # cmin < cmax even when only rank 2 exists


def _front_order(front: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    return front.sort_values(metric, ascending=mode == "min", kind="stable")


# --------------------------------------------------------------------------------------- Pareto HTML


def pareto_html(table: pd.DataFrame, objectives: list[tuple[str, str]], searched: list[str], title: str) -> str:
    """A self-contained HTML page (plotly.js embedded) comparing the study's ranked trials.

    table: one row per trial with `trial`, `status`, `pareto.rank` (Int64, 1 = non-dominated front,
    <NA> = excluded), one float column per objective metric, one column per searched param. The front
    is pareto.rank == 1 (`pareto.front` says the same and is not read).
    1 objective: the trials' values sorted best-first, the best (rank 1) highlighted. 2: a scatter,
    the front bigger in FRONT_COLOR joined by its attainment staircase, other ranks on a sequential
    scale. 3+: a scatter matrix (go.Splom) of every objective pair. Hover: trial id, status, rank,
    each objective, each searched param ('—' when a conditional param was inactive). Excluded trials
    are not drawn; the subtitle counts them and names the missing metric(s).
    """
    objectives = _check_objectives(objectives)
    p = _Pareto(table, objectives)
    searched = list(searched)
    fig = go.Figure()
    if not len(p.ranked):
        fig.add_annotation(text=EMPTY_PARETO_TEXT, x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font=dict(size=20, color="#666"))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    elif len(objectives) == 1:
        _html_one(fig, p, searched)
    elif len(objectives) == 2:
        _html_two(fig, p, searched)
    else:
        _html_matrix(fig, p, searched)
    fig.update_layout(
        template="plotly_white",
        font=dict(family="DejaVu Sans, Arial, sans-serif", size=14),
        title=dict(text=html_lib.escape(title), subtitle=dict(text=html_lib.escape(p.subtitle)), x=0.02,
                   font=dict(size=20)),
        hoverlabel=dict(font_size=13, align="left"),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        margin=dict(t=110, l=80, r=40, b=70),
    )
    page = fig.to_html(include_plotlyjs=True, full_html=True, config={"responsive": True, "displaylogo": False})
    # plotly escapes "/" inside its JSON; the <title> keeps the names readable (tab, search, tests).
    head = (f"<title>{html_lib.escape(title)} — {html_lib.escape(p.subtitle)}</title>\n"
            "    <style>body {margin: 0;}</style>")  # the plot fills the window (or iframe), no scrollbar
    return page.replace("<head>", f"<head>\n    {head}", 1)


def _marker_line() -> dict:
    return dict(width=1, color="white")


def _html_one(fig: go.Figure, p: _Pareto, searched: list[str]) -> None:
    metric, mode = p.objectives[0]
    r = p.ranked
    order = np.arange(1, len(r) + 1)
    best = (r["pareto.rank"] == 1).to_numpy()
    hover = np.array(p.hover(r, searched))
    fig.add_trace(go.Scatter(
        x=order[~best], y=r.loc[~best, metric], mode="markers", name="other trials", text=hover[~best],
        hovertemplate="%{text}<extra></extra>",
        marker=dict(size=10, color=r.loc[~best, "pareto.rank"], colorscale=_rank_colorscale(),
                    cmin=_rank_range(p)[0], cmax=_rank_range(p)[1], line=_marker_line(),
                    colorbar=dict(title=dict(text="pareto.rank"), thickness=14, len=0.6,
                                  dtick=1 if p.max_rank <= 10 else None) if (~best).any() else None)))
    fig.add_trace(go.Scatter(
        x=order[best], y=r.loc[best, metric], mode="markers+text", name="best (rank 1)", text=hover[best],
        texttemplate=[f"{t}" for t in r.loc[best, "trial"]], textposition="middle right",
        hovertemplate="%{text}<extra></extra>",
        marker=dict(size=16, color=FRONT_COLOR, line=dict(width=1.5, color="#7a1f08"), symbol="star")))
    ticks = dict(tickmode="array", tickvals=order, ticktext=list(r["trial"]), tickangle=-45) if len(r) <= 40 else {}
    fig.update_xaxes(title_text="trials, best first", **ticks)
    fig.update_yaxes(title_text=_axis_label(metric, mode, "y"))


def _html_two(fig: go.Figure, p: _Pareto, searched: list[str]) -> None:
    (mx, modex), (my, modey) = p.objectives
    o, f = p.others, _front_order(p.front, mx, modex)
    cmin, cmax = _rank_range(p)
    if len(o):
        fig.add_trace(go.Scatter(
            x=o[mx], y=o[my], mode="markers", name="other ranks", text=p.hover(o, searched),
            hovertemplate="%{text}<extra></extra>",
            marker=dict(size=10, color=o["pareto.rank"], colorscale=_rank_colorscale(), cmin=cmin, cmax=cmax,
                        line=_marker_line(), colorbar=dict(title=dict(text="pareto.rank"), thickness=14, len=0.6,
                                                           dtick=1 if cmax - cmin <= 10 else None))))
    # The attainment staircase: sorted better-first along x, horizontal then vertical.
    fig.add_trace(go.Scatter(
        x=f[mx], y=f[my], mode="lines", line=dict(shape="hv", color=FRONT_COLOR, width=2, dash="dot"),
        hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(
        x=f[mx], y=f[my], mode="markers", name="front (rank 1)", text=p.hover(f, searched),
        hovertemplate="%{text}<extra></extra>",
        marker=dict(size=15, color=FRONT_COLOR, line=dict(width=1.5, color="#7a1f08"))))
    fig.update_xaxes(title_text=_axis_label(mx, modex, "x"))
    fig.update_yaxes(title_text=_axis_label(my, modey, "y"))


def _html_matrix(fig: go.Figure, p: _Pareto, searched: list[str]) -> None:
    o, f = p.others, p.front
    cmin, cmax = _rank_range(p)
    labels = [_axis_label(m, mode) for m, mode in p.objectives]

    def dims(rows):
        return [dict(label=lab, values=rows[m]) for lab, (m, _) in zip(labels, p.objectives)]

    common = dict(diagonal=dict(visible=False), showupperhalf=False, hovertemplate="%{text}<extra></extra>")
    if len(o):
        fig.add_trace(go.Splom(
            dimensions=dims(o), name="other ranks", text=p.hover(o, searched), **common,
            marker=dict(size=8, color=o["pareto.rank"], colorscale=_rank_colorscale(), cmin=cmin, cmax=cmax,
                        line=_marker_line(), showscale=True,
                        colorbar=dict(title=dict(text="pareto.rank"), thickness=14, len=0.5,
                                      dtick=1 if p.max_rank <= 10 else None))))
    fig.add_trace(go.Splom(
        dimensions=dims(f), name="front (rank 1)", text=p.hover(f, searched), **common,
        marker=dict(size=12, color=FRONT_COLOR, line=dict(width=1.2, color="#7a1f08"))))
    fig.update_layout(dragmode="select", hovermode="closest", showlegend=True)


# ---------------------------------------------------------------------------------------- Pareto PNG


def pareto_png_size(num_objectives: int) -> tuple[int, int]:
    """(width, height) px of pareto_png: 1000×750 for 1 or 2 objectives; for M ≥ 3, a lower-triangle
    grid of (M - 1) × (M - 1) panels of PARETO_PANEL_PX: (120 + 400·(M - 1), 170 + 400·(M - 1))."""
    if num_objectives <= 2:
        return PARETO_PNG_SIZE
    side = PARETO_PANEL_PX * (num_objectives - 1)
    return 120 + side, 170 + side


def pareto_png(table: pd.DataFrame, objectives: list[tuple[str, str]], title: str, path) -> Path:
    """The pareto_html picture as a static PNG of pareto_png_size(len(objectives)) px.

    Front points (rank 1) are big, in FRONT_COLOR, labelled with their trial ids (identical points share
    one label; a label that would overlap another is left out; none beyond MAX_FRONT_LABELS points);
    other ranks on a sequential scale with a colourbar. 3+ objectives: panel (i, j) of the lower
    triangle plots objective j (x) against objective i + 1 (y).
    """
    objectives = _check_objectives(objectives)
    path = _prepare_path(path)
    p = _Pareto(table, objectives)
    fig = _figure(pareto_png_size(len(objectives)))
    w, h = fig.bbox.width, fig.bbox.height
    fig.text(12 / w, 1 - 12 / h, title, ha="left", va="top", fontsize=15, fontweight="bold")
    fig.text(12 / w, 1 - 40 / h, p.subtitle, ha="left", va="top", fontsize=11, color="#444")
    if not len(p.ranked):
        fig.text(0.5, 0.5, EMPTY_PARETO_TEXT, ha="center", va="center", fontsize=18, color="#666")
    elif len(objectives) <= 2:
        ax = fig.add_axes((90 / w, 75 / h, 1 - 200 / w, 1 - 170 / h))
        (_png_one if len(objectives) == 1 else _png_two)(fig, ax, p)
    else:
        _png_matrix(fig, p)
    return _save(fig, path)


def _rank_cmap() -> LinearSegmentedColormap:
    return LinearSegmentedColormap.from_list("pareto_rank", list(RANK_COLORS))


def _rank_scatter(fig, ax, rows: pd.DataFrame, x, y, p: _Pareto, colorbar: bool, size=55):
    if not len(rows):
        return None
    cmin, cmax = _rank_range(p)
    sc = ax.scatter(x, y, c=rows["pareto.rank"], cmap=_rank_cmap(), vmin=cmin, vmax=cmax, s=size,
                    edgecolors="white", linewidths=0.6, label="other ranks", zorder=2)
    if colorbar:
        cb = fig.colorbar(sc, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("pareto.rank")
        if cmax - cmin <= 10:
            cb.set_ticks(range(cmin, cmax + 1))
    return sc


_LABEL_SPOTS = ((6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"),
                (-6, -4, "right", "top"))  # offsets in points, tried in this order


def _label_front(ax, front: pd.DataFrame, mx: str, my: str | None, xs=None) -> None:
    """Trial ids next to front points; points at identical coordinates share one label. Each label
    takes the first of four spots around its point that stays inside the axes and overlaps no earlier
    label; a label with no free spot is left out (the HTML page has every id on hover).

    Call it last: it reads the axes' final limits and position to measure the labels."""
    xv = front[mx].to_numpy() if xs is None else np.asarray(xs)
    yv = front[my].to_numpy() if my else front[mx].to_numpy()
    groups: dict[tuple[float, float], list[str]] = {}
    for x, y, t in zip(xv, yv, front["trial"]):
        groups.setdefault((float(x), float(y)), []).append(str(t))
    if len(groups) > MAX_FRONT_LABELS:
        return
    ax.get_xlim(), ax.get_ylim()  # settles the autoscaled limits before measuring
    renderer = ax.figure.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    placed = []
    for (x, y), ids in groups.items():
        for dx, dy, ha, va in _LABEL_SPOTS:
            ann = ax.annotate(", ".join(ids), (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=8, color="#7a1f08", zorder=4)
            bb = ann.get_window_extent(renderer).padded(3)  # labels that merely touch read as one
            inside = box.x0 <= bb.x0 and bb.x1 <= box.x1 and box.y0 <= bb.y0 and bb.y1 <= box.y1
            if inside and not any(bb.overlaps(q) for q in placed):
                placed.append(bb)
                break
            ann.remove()


def _front_scatter(ax, x, y, size=110, marker="o"):
    return ax.scatter(x, y, s=size, c=FRONT_COLOR, edgecolors="#7a1f08", linewidths=1.0, marker=marker,
                      label="front (rank 1)", zorder=3)


def _png_one(fig, ax, p: _Pareto) -> None:
    metric, mode = p.objectives[0]
    r = p.ranked
    order = np.arange(1, len(r) + 1)
    best = (r["pareto.rank"] == 1).to_numpy()
    _rank_scatter(fig, ax, r[~best], order[~best], r.loc[~best, metric], p, colorbar=True)
    _front_scatter(ax, order[best], r.loc[best, metric], size=220, marker="*")
    if len(r) <= 30:
        ax.set_xticks(order, list(r["trial"]), rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("trials, best first")
    ax.set_ylabel(_axis_label(metric, mode, "y"))
    ax.margins(x=0.08, y=0.12)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    _label_front(ax, r[best], metric, None, xs=order[best])


def _png_two(fig, ax, p: _Pareto) -> None:
    (mx, modex), (my, modey) = p.objectives
    f = _front_order(p.front, mx, modex)
    _rank_scatter(fig, ax, p.others, p.others[mx], p.others[my], p, colorbar=True)
    ax.step(f[mx], f[my], where="post", color=FRONT_COLOR, lw=1.5, ls=":", zorder=2.5)
    _front_scatter(ax, f[mx], f[my])
    ax.set_xlabel(_axis_label(mx, modex, "x"))
    ax.set_ylabel(_axis_label(my, modey, "y"))
    ax.margins(0.08)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    _label_front(ax, f, mx, my)


def _png_matrix(fig, p: _Pareto) -> None:
    m = len(p.objectives)
    n = m - 1
    w, h = fig.bbox.width, fig.bbox.height
    left, top, gap = 80, 110, 20  # px; the panels share axes along rows and columns
    cell = PARETO_PANEL_PX
    axes = {}
    for i in range(n):  # row i: y = objective i + 1
        for j in range(i + 1):  # column j: x = objective j
            x0 = left + j * cell
            y0 = h - top - (i + 1) * cell
            ax = fig.add_axes(((x0 + gap) / w, (y0 + gap * 2) / h, (cell - gap * 1.5) / w, (cell - gap * 2.5) / h))
            axes[i, j] = ax
            (mxj, _), (myi, _) = p.objectives[j], p.objectives[i + 1]
            _rank_scatter(fig, ax, p.others, p.others[mxj], p.others[myi], p, colorbar=False, size=30)
            _front_scatter(ax, p.front[mxj], p.front[myi], size=70)
            ax.grid(alpha=0.3)
            ax.margins(0.1)
            ax.tick_params(labelsize=8)
            if i == n - 1:
                ax.set_xlabel(_axis_label(*p.objectives[j]), fontsize=10)
            if j == 0:
                ax.set_ylabel(_axis_label(*p.objectives[i + 1]), fontsize=10)
            _label_front(ax, p.front, mxj, myi)
    # The empty upper triangle holds the legend and the rank colourbar.
    handles = [Line2D([], [], marker="o", ls="", color=FRONT_COLOR, markeredgecolor="#7a1f08", markersize=10,
                      label="front (rank 1)")]
    if len(p.others):
        handles.append(Line2D([], [], marker="o", ls="", color=RANK_COLORS[0], markersize=8, label="other ranks"))
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(1 - 30 / w, 1 - top / h), fontsize=10,
               frameon=False)
    if len(p.others):
        cmin, cmax = _rank_range(p)
        cax = fig.add_axes((1 - 250 / w, 1 - (top + 120) / h, 180 / w, 14 / h))
        sm = plt.cm.ScalarMappable(cmap=_rank_cmap(), norm=plt.Normalize(cmin, cmax))
        cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
        cb.set_label("pareto.rank", fontsize=9)
        cb.ax.tick_params(labelsize=8)
        if cmax - cmin <= 10:
            cb.set_ticks(range(cmin, cmax + 1))


# ------------------------------------------------------------------------------------------------- σ


def sigma_png(sigma: pd.DataFrame, path, title: str, groups: dict[str, list[int]] | None = None) -> Path:
    """σ per landmark over epochs (the adaloss paper, figs 6 and 7), SIGMA_PNG_SIZE px.

    sigma: index = epoch (1-based), one column per landmark index k (0..K-1), σ in input pixels.
    Without groups: one line per landmark ("landmark k"), a legend up to SIGMA_LEGEND_MAX landmarks and
    a colourbar of k above. With groups (region → landmark indices, e.g. FACE68_REGIONS): one line
    per region, the mean σ of its landmarks, in a shaded min–max band.
    """
    path = _prepare_path(path)
    fig = _figure(SIGMA_PNG_SIZE)
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
        ax.text(0.5, 0.5, "no σ recorded yet", transform=ax.transAxes, ha="center", va="center",
                fontsize=16, color="#666")
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
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=10, title="region\n(mean, min–max)",
                  title_fontsize=9, frameon=False, alignment="left")
    else:
        keys = sorted(cols)
        many = len(keys) > SIGMA_LEGEND_MAX
        cmap = plt.get_cmap("viridis" if many else "tab20" if len(keys) > 10 else "tab10")
        for n, k in enumerate(keys):
            c = cmap(n / max(1, len(keys) - 1)) if many else cmap(n)
            ax.plot(epochs, sigma[cols[k]].to_numpy(dtype=float), color=c, lw=1.0 if many else 1.6,
                    alpha=0.85, marker=marker, label=f"landmark {k}")
        if many:
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(keys[0], keys[-1]))
            cb = fig.colorbar(sm, cax=fig.add_axes((1 - 150 / w, 65 / h, 16 / w, 1 - 120 / h)))
            cb.set_label("landmark k")
        else:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False)
    if len(epochs):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- CED


def ced_errors(errors: np.ndarray, unit: str) -> np.ndarray:
    """The finite errors a CED is over, (M,) float64. errors: (N, K), NaN where not annotated.

    unit "mm": every finite landmark error e_ik; "nme": per-image means over each row's finite entries
    (an image with none is left out).
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim == 1:
        e = e[:, None]
    if unit == "mm":
        flat = e.ravel()
        return flat[np.isfinite(flat)]
    if unit == "nme":
        ok = np.isfinite(e)
        n = ok.sum(axis=1)
        means = np.where(ok, e, 0.0).sum(axis=1) / np.maximum(n, 1)
        return means[n > 0]
    raise ValueError(f"unit: unknown {unit!r}; choose one of ['mm', 'nme']")


def _auc(e: np.ndarray, threshold: float) -> float:
    """mean_i max(0, T - e_i) / T over finite e (M,): the exact area under the CED on [0, T] over T."""
    e = e[np.isfinite(e)]
    return float(np.mean(np.clip(threshold - np.clip(e, 0.0, None), 0.0, None)) / threshold) if e.size else math.nan


def ced_summary(errors: np.ndarray, unit: str, threshold: float) -> dict[str, float]:
    """What ced_png writes: {"n": M, "mean": mean e_i, "auc": mean_i max(0, T - e_i) / T} over ced_errors."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"ced: threshold must be a finite number > 0, got {threshold!r}")
    e = ced_errors(errors, unit)
    return {"n": int(e.size), "mean": float(e.mean()) if e.size else math.nan, "auc": _auc(e, threshold)}


def ced_png(errors: np.ndarray, unit: str, threshold: float, path, title: str) -> Path:
    """Cumulative error distribution, CED_PNG_SIZE px. errors: (N, K), NaN = not annotated.

    unit "mm": over all finite landmark errors (radial error, mm); "nme": over per-image NME (%).
    x from 0 to max(1.5·T, 95th percentile), at most CED_X_CAP·T; a dashed line at T; the shaded area
    is the AUC@T (exact: mean_i max(0, T - e_i) / T, see ced_summary).
    """
    path = _prepare_path(path)
    s = ced_summary(errors, unit, threshold)
    e = np.sort(ced_errors(errors, unit))
    mm = unit == "mm"
    sym = "mm" if mm else "%"
    fig = _figure(CED_PNG_SIZE)
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
        ax.text(0.5, 0.5, "no finite errors", transform=ax.transAxes, ha="center", va="center",
                fontsize=16, color="#666")
    ax.axvline(threshold, color="#c0392b", ls="--", lw=1.5, label=f"threshold {threshold:g} {sym}")
    what = "landmarks" if mm else "images"
    lines = [f"AUC@{threshold:g} {sym} = {s['auc']:.3f}", f"mean = {s['mean']:.3g} {sym}", f"n = {s['n']} {what}"]
    beyond = int((e > xmax).sum())
    if beyond:
        lines.append(f"{100 * beyond / e.size:.0f} % beyond {xmax:g} {sym}")
    ax.text(0.97, 0.05, "\n".join(lines),
            transform=ax.transAxes, ha="right", va="bottom", fontsize=11, family="DejaVu Sans Mono",
            bbox=dict(boxstyle="round,pad=0.4", fc="white", ec="#999"))
    ax.legend(loc="upper left", fontsize=10, framealpha=0.9)
    return _save(fig, path)


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
    return (max(OVERLAY_MIN_W, _row_w(cols)),
            OVERLAY_HEADER_PX + rows * (_panel_h(height, width) + OVERLAY_TITLE_PX))


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
    fig = _figure((fw, fh))
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


def overlays_png(images: np.ndarray, gt: np.ndarray, pred: np.ndarray, path, title: str,
                 errors: np.ndarray | None = None, unit: str = "mm") -> Path:
    """Ground truth (green circles) and predictions (red crosses) on the images, overlay_png_size px.

    images: (n, H, W) uint8, n ≤ 8; gt, pred: (n, K, 2) (x, y) input pixels, pixel centres at integers;
    a NaN row is a missing landmark (its marker and link are not drawn). errors: (n, K) in mm or NME %
    (unit), NaN ignored; each panel's title is then the image's mean error.
    """
    if unit not in ("mm", "nme"):
        raise ValueError(f"overlays_png: unit {unit!r}; choose one of ['mm', 'nme']")
    path = _prepare_path(path)
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
            m = ced_errors(np.asarray(errors, dtype=float)[i:i + 1], "nme")  # the row's mean, in either unit
            label = (f"mean {m[0]:.2f} mm" if unit == "mm" else f"NME {m[0]:.1f} %") if m.size else "none annotated"
        ax.set_title(label, fontsize=10, pad=4)
    handles = [Line2D([], [], marker="o", ls="", mfc="none", mec=GT_COLOR, mew=1.5, ms=8, label="ground truth"),
               Line2D([], [], marker="x", ls="", color=PRED_COLOR, mew=1.5, ms=8, label="prediction"),
               Line2D([], [], color=LINK_COLOR, lw=1.5, label="error")]
    fh = fig.bbox.height
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, 1 - 32 / fh), ncol=3, fontsize=9,
               frameon=False, handletextpad=0.3, columnspacing=1.0, borderaxespad=0.2,
               facecolor="white")
    return _save(fig, path)


def heatmaps_png(images: np.ndarray, heatmaps: np.ndarray, stride: int, path, title: str) -> Path:
    """Predicted heatmaps over the images, overlay_png_size px (same panels as overlays_png).

    images: (n, H, W) uint8; heatmaps: (n, h, w) in [0, 1] at output stride `stride`: heatmap pixel u
    is centred at input (u + 0.5)·stride - 0.5, so it covers [-0.5, w·stride - 0.5] × [-0.5, h·stride - 0.5].
    The heatmap's opacity is 0.8·√value, so the image stays visible where the heatmap is 0.
    """
    path = _prepare_path(path)
    fig, axes = _panels(images, title, "heatmaps_png")
    hm = np.nan_to_num(np.asarray(heatmaps, dtype=float), nan=0.0).clip(0.0, 1.0)
    for i, ax in enumerate(axes):
        hh, ww = hm[i].shape
        # Opacity √h: weak secondary peaks stay visible, zero stays transparent. Bilinear keeps the
        # peak's value (Agg's "bicubic" is a smoothing B-spline that dims a one-pixel peak).
        ax.imshow(hm[i], cmap="inferno", vmin=0, vmax=1, alpha=0.8 * np.sqrt(hm[i]), interpolation="bilinear",
                  extent=(-0.5, ww * stride - 0.5, hh * stride - 0.5, -0.5))
        H, W = np.asarray(images).shape[1:]
        ax.set_xlim(-0.5, W - 0.5)  # imshow of the heatmap widened the limits to its own extent
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_aspect("auto")
        ax.set_title(f"image {i + 1}  (max {hm[i].max():.2f})", fontsize=10, pad=4)
    fw, fh = fig.bbox.width, fig.bbox.height
    fig.text(8 / fw, 1 - 38 / fh, f"max over landmarks of normalised heatmaps, stride {stride}", ha="left",
             va="top", fontsize=9, color="#444")
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ importance


def _text_px(fig: plt.Figure, texts: list[str], fontsize: float) -> int:
    """Widest rendered width of texts in px at fontsize."""
    renderer = fig.canvas.get_renderer()
    widest = 0.0
    for t in texts:
        artist = fig.text(0, 0, t, fontsize=fontsize)
        widest = max(widest, artist.get_window_extent(renderer).width)
        artist.remove()
    return math.ceil(widest)


def importance_png_size(n: int) -> tuple[int, int]:
    """(width, height) px of importance_png for n params: (800, 200 + 40·min(n, 30)), at most 800×1400."""
    return IMPORTANCE_PNG_W, 200 + 40 * min(max(n, 0), IMPORTANCE_MAX_BARS)


def importance_png(importances: dict[str, float], path, title: str, subtitle: str = "") -> Path:
    """Parameter importances as horizontal bars, largest at the top, importance_png_size(n) px.

    importances: dotted param name → importance (e.g. Optuna's fANOVA, summing to 1). Beyond
    IMPORTANCE_MAX_BARS params only the largest are drawn, and the title says so.
    """
    path = _prepare_path(path)
    items = sorted(((str(k), float(v)) for k, v in importances.items()),
                   key=lambda kv: -kv[1] if math.isfinite(kv[1]) else math.inf)
    shown = items[:IMPORTANCE_MAX_BARS]
    fig = _figure(importance_png_size(len(items)))
    w, h = fig.bbox.width, fig.bbox.height
    left = min(400, 30 + _text_px(fig, [k for k, _ in shown], 10))  # room for the longest dotted name
    ax = fig.add_axes((left / w, 60 / h, 1 - (left + 70) / w, 1 - 120 / h))
    suffix = f" (top {IMPORTANCE_MAX_BARS} of {len(items)})" if len(items) > IMPORTANCE_MAX_BARS else ""
    fig.text(10 / w, 1 - 12 / h, title + suffix, ha="left", va="top", fontsize=14, fontweight="bold")
    if subtitle:
        fig.text(10 / w, 1 - 36 / h, subtitle, ha="left", va="top", fontsize=9, color="#444")
    ax.set_xlabel("importance")
    if not shown:
        ax.text(0.5, 0.5, "no importances", transform=ax.transAxes, ha="center", va="center",
                fontsize=14, color="#666")
        ax.set_yticks([])
        return _save(fig, path)
    names = [k for k, _ in shown][::-1]  # barh draws bottom-up; the largest goes on top
    vals = np.array([v for _, v in shown][::-1])
    finite = np.where(np.isfinite(vals), vals, 0.0)
    bars = ax.barh(names, finite, color="#1f4e79", height=0.65)
    hi = max(float(finite.max()), 0.0)
    lo = min(float(finite.min()), 0.0)
    span = (hi - lo) or 1.0
    ax.set_xlim(lo - (0.02 * span if lo < 0 else 0), hi + 0.15 * span)
    for bar, v in zip(bars, vals):
        x = bar.get_width()
        ax.text(x + 0.01 * span if x >= 0 else x - 0.01 * span, bar.get_y() + bar.get_height() / 2,
                f"{v:.3g}" if math.isfinite(v) else "n/a", va="center", ha="left" if x >= 0 else "right", fontsize=9)
    ax.tick_params(axis="y", labelsize=10)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, path)
