"""The Pareto comparison as a static PNG (pareto_view.ParetoView drawn with matplotlib): the
picture of pareto_page.py's plotly page, for the study run's artefacts and the report.

    pareto_png(table, [("val/mre_mm", "min"), ("cost/gflops", "min")], "farnet", out / "pareto.png",
               searched=["optim.lr"])   # pareto_png_size(2) = 1000×750 px

Front points are big, in FRONT_COLOR, labelled with their recipes where there is room; other ranks on
a sequential scale with a colourbar; stopped early a triangle, unranked hollow grey; configurations
with repeats at their means with grey 95 % error bars.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dashboards.pareto_view import ParetoView, front_order, grouped_labels, rank_range, stopped
from dashboards.plots import (
    COST_FRONT_COLOR,
    EMPTY_PARETO_TEXT,
    ERROR_COLOR,
    FRONT_COLOR,
    FRONT_EDGE,
    OVERLAP_NAME,
    PARETO_PANEL_PX,
    PARETO_PNG_SIZE,
    RANK_COLORS,
    STOPPED_SYMBOL,
    UNRANKED_COLOR,
    axis_label,
    check_objectives,
    figure,
    plt,
    prepare_path,
    save,
)


def pareto_png_size(num_objectives: int) -> tuple[int, int]:
    """(width, height) px of pareto_png: 1000×750 for 1 or 2 objectives; for M ≥ 3, a lower-triangle
    grid of (M - 1) × (M - 1) panels of PARETO_PANEL_PX: (120 + 400·(M - 1), 170 + 400·(M - 1))."""
    if num_objectives <= 2:
        return PARETO_PNG_SIZE
    side = PARETO_PANEL_PX * (num_objectives - 1)
    return 120 + side, 170 + side


def pareto_png(
    table: pd.DataFrame, objectives: list[tuple[str, str]], title: str, path, searched: Sequence[str] = ()
) -> Path:
    """The pareto_html picture as a static PNG of pareto_png_size(len(objectives)) px.

    Front points (rank 1) are big, in FRONT_COLOR, labelled with their recipes (identical points
    share one label; a label that would overlap another is left out; none beyond MAX_FRONT_LABELS
    points); other ranks on a sequential scale with a colourbar; stopped early a triangle, unranked
    hollow grey. One objective: against its cost axis, the trials no cheaper trial beats labelled.
    3+ objectives: panel (i, j) of the lower triangle plots objective j (x) against objective i + 1 (y).
    """
    objectives = check_objectives(objectives)
    path = prepare_path(path)
    p = ParetoView(table, objectives, searched)
    fig = figure(pareto_png_size(len(objectives)))
    w, h = fig.bbox.width, fig.bbox.height
    fig.text(12 / w, 1 - 12 / h, title, ha="left", va="top", fontsize=15, fontweight="bold")
    fig.text(12 / w, 1 - 40 / h, p.subtitle, ha="left", va="top", fontsize=11, color="#444")
    if not len(p.ranked) and not len(p.unranked):
        fig.text(0.5, 0.5, EMPTY_PARETO_TEXT, ha="center", va="center", fontsize=18, color="#666")
    elif len(objectives) <= 2:
        ax = fig.add_axes((90 / w, 75 / h, 1 - 200 / w, 1 - 170 / h))
        (_png_two if len(objectives) == 2 else _png_cost if p.cost else _png_one)(fig, ax, p)
    else:
        _png_matrix(fig, p)
    return save(fig, path)


def _rank_cmap() -> LinearSegmentedColormap:
    return LinearSegmentedColormap.from_list("pareto_rank", list(RANK_COLORS))


def _split(rows: pd.DataFrame, x, y):
    """(x, y, marker) for the finished and the stopped-early rows."""
    x, y, early = np.asarray(x, dtype=float), np.asarray(y, dtype=float), stopped(rows)
    return [(x[~early], y[~early], "o", ~early), (x[early], y[early], STOPPED_SYMBOL[1], early)]


def _rank_scatter(fig, ax, rows: pd.DataFrame, x, y, p: ParetoView, colorbar: bool, size=55, label="other ranks"):
    if not len(rows):
        return None
    cmin, cmax = rank_range(p)
    sc = None
    for xs, ys, marker, keep in _split(rows, x, y):
        if len(xs):
            sc = ax.scatter(
                xs,
                ys,
                c=rows["pareto.rank"].to_numpy()[keep],
                cmap=_rank_cmap(),
                vmin=cmin,
                vmax=cmax,
                s=size if marker == "o" else 1.5 * size,
                marker=marker,
                edgecolors="white",
                linewidths=0.6,
                label=label,
                zorder=2,
            )
            label = None
    if colorbar:
        cb = fig.colorbar(sc, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("pareto.rank")
        if cmax - cmin <= 10:
            cb.set_ticks(range(cmin, cmax + 1))
        else:
            cb.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return sc


def _hollow_scatter(ax, rows: pd.DataFrame, x, y, size, edge, width, label, zorder):
    """Hollow points in `edge` (a bigger triangle for a trial stopped early), labelled once."""
    for xs, ys, marker, _ in _split(rows, x, y):
        if len(xs):
            ax.scatter(
                xs,
                ys,
                s=size if marker == "o" else 1.5 * size,
                marker=marker,
                facecolors="none",
                edgecolors=edge,
                linewidths=width,
                label=label,
                zorder=zorder,
            )
            label = None


def _unranked_scatter(ax, rows: pd.DataFrame, x, y, size=55):
    _hollow_scatter(ax, rows, x, y, size, UNRANKED_COLOR, 1.4, "unranked (running, failed, …)", 2)


def _front_scatter(ax, rows: pd.DataFrame, x, y, size=110, marker="o", label="front (rank 1)"):
    """Front points in FRONT_COLOR: `marker` (a star for the best of one objective), a triangle if stopped early."""
    for xs, ys, m, _ in _split(rows, x, y):
        if len(xs):
            finished = m == "o"
            ax.scatter(
                xs,
                ys,
                s=size if finished or marker == "o" else 0.6 * size,
                marker=marker if finished else m,
                c=FRONT_COLOR,
                edgecolors=FRONT_EDGE,
                linewidths=1.0,
                label=label,
                zorder=3,
            )
            label = None


def _overlap_scatter(ax, rows: pd.DataFrame, x, y, size=70):
    """Configurations not on the front whose 95 % intervals overlap a front configuration's: hollow FRONT_EDGE."""
    _hollow_scatter(ax, rows, x, y, size, FRONT_EDGE, 1.8, OVERLAP_NAME, 2.2)


def _error_bars(ax, p: ParetoView, x, y, xcol=None, ycol=None) -> None:
    """The 95 % intervals of every drawn configuration (ranked and unranked) as grey bars behind them."""
    for rows, xs in ((p.ranked, x[0]), (p.unranked, x[1])):
        xerr, yerr = p.errors(rows, xcol), p.errors(rows, ycol)
        if len(rows) and (xerr is not None or yerr is not None):
            ax.errorbar(
                np.asarray(xs, dtype=float),
                rows[y].astype(float),
                xerr=None if xerr is None else np.stack(xerr),
                yerr=None if yerr is None else np.stack(yerr),
                fmt="none",
                ecolor=ERROR_COLOR,
                elinewidth=1.0,
                capsize=2.5,
                zorder=1.5,
            )


def _stopped_handle() -> Line2D:
    return Line2D([], [], marker=STOPPED_SYMBOL[1], ls="", color="#555555", markersize=8, label="stopped early (ASHA)")


def _png_legend(ax, p: ParetoView) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if p.any_stopped:
        handles.append(_stopped_handle())
        labels.append("stopped early (ASHA)")
    ax.legend(handles, labels, loc="best", fontsize=9)


_LABEL_SPOTS = (
    (6, 4, "left", "bottom"),
    (6, -4, "left", "top"),
    (-6, 4, "right", "bottom"),
    (-6, -4, "right", "top"),
)  # offsets in points, tried in this order


def _label_points(ax, xs, ys, labels: list[str], color: str = FRONT_EDGE) -> None:
    """Labels next to points; points at identical coordinates share one. Each label takes the
    first of four spots around its point that stays inside the axes and overlaps no earlier label;
    a label with no free spot is left out (the HTML page has every trial on hover).

    Call it last: it reads the axes' final limits and position to measure the labels."""
    gx, gy, texts = grouped_labels(xs, ys, labels)
    if not texts:
        return
    ax.get_xlim(), ax.get_ylim()  # settles the autoscaled limits before measuring
    renderer = ax.figure.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    placed = []
    for x, y, text in zip(gx, gy, texts):
        for dx, dy, ha, va in _LABEL_SPOTS:
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=8,
                color=color,
                zorder=4,
            )
            bb = ann.get_window_extent(renderer).padded(3)  # labels that merely touch read as one
            inside = box.x0 <= bb.x0 and bb.x1 <= box.x1 and box.y0 <= bb.y0 and bb.y1 <= box.y1
            if inside and not any(bb.overlaps(q) for q in placed):
                placed.append(bb)
                break
            ann.remove()


def _png_one(fig, ax, p: ParetoView) -> None:
    """One objective and no cost column: the trials best first (unranked ones after them)."""
    metric, mode = p.objectives[0]
    r, u = p.ranked, p.unranked
    order = np.arange(1, len(r) + 1)
    best = (r["pareto.rank"] == 1).to_numpy()
    rest = ~best & ~p.overlap
    _error_bars(ax, p, (order, np.arange(len(r) + 1, len(r) + len(u) + 1)), metric, ycol=metric)
    _rank_scatter(fig, ax, r[rest], order[rest], r.loc[rest, metric], p, colorbar=True, label=f"other {p.unit}s")
    _overlap_scatter(ax, r[p.overlap], order[p.overlap], r.loc[p.overlap, metric])
    _unranked_scatter(ax, u, np.arange(len(r) + 1, len(r) + len(u) + 1), u[metric])
    _front_scatter(ax, r[best], order[best], r.loc[best, metric], size=220, marker="*", label="best (rank 1)")
    ids = list(r["trial"]) + list(u["trial"])
    if len(ids) <= 30:
        ax.set_xticks(np.arange(1, len(ids) + 1), ids, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel(f"{p.unit}s, best first")
    ax.set_ylabel(axis_label(metric, mode, "y"))
    ax.margins(x=0.08, y=0.12)
    ax.grid(alpha=0.3)
    _png_legend(ax, p)
    _label_points(ax, order[best], r.loc[best, metric], p.labels(r[best]))


def _png_cost(fig, ax, p: ParetoView) -> None:
    metric, mode = p.objectives[0]
    cost, r, cf = p.cost, p.ranked, p.cost_front
    best = (r["pareto.rank"] == 1).to_numpy()
    rest = ~best & ~p.overlap
    _error_bars(ax, p, (r[cost], p.unranked[cost]), metric, ycol=metric)
    _rank_scatter(fig, ax, r[rest], r.loc[rest, cost], r.loc[rest, metric], p, colorbar=True, label=f"other {p.unit}s")
    _overlap_scatter(ax, r[p.overlap], r.loc[p.overlap, cost], r.loc[p.overlap, metric])
    _unranked_scatter(ax, p.unranked, p.unranked[cost], p.unranked[metric])
    ax.step(
        cf[cost],
        cf[metric],
        where="post",
        color=COST_FRONT_COLOR,
        lw=1.3,
        ls=":",
        zorder=2.5,
        label=f"best for its {cost}",
    )
    _front_scatter(ax, r[best], r.loc[best, cost], r.loc[best, metric], size=260, marker="*", label="best (rank 1)")
    ax.set_xlabel(axis_label(cost, "min", "x"))
    ax.set_ylabel(axis_label(metric, mode, "y"))
    ax.margins(0.08)
    ax.grid(alpha=0.3)
    _png_legend(ax, p)
    _label_points(ax, cf[cost], cf[metric], p.labels(cf), color="#222222")


def _png_two(fig, ax, p: ParetoView) -> None:
    (mx, modex), (my, modey) = p.objectives
    f = front_order(p.front, mx, modex)
    _error_bars(ax, p, (p.ranked[mx], p.unranked[mx]), my, xcol=mx, ycol=my)
    _rank_scatter(fig, ax, p.others, p.others[mx], p.others[my], p, colorbar=True)
    _overlap_scatter(ax, p.overlapping, p.overlapping[mx], p.overlapping[my])
    _unranked_scatter(ax, p.unranked, p.unranked[mx], p.unranked[my])
    ax.step(f[mx], f[my], where="post", color=FRONT_COLOR, lw=1.5, ls=":", zorder=2.5)
    _front_scatter(ax, f, f[mx], f[my])
    ax.set_xlabel(axis_label(mx, modex, "x"))
    ax.set_ylabel(axis_label(my, modey, "y"))
    ax.margins(0.08)
    ax.grid(alpha=0.3)
    _png_legend(ax, p)
    _label_points(ax, f[mx], f[my], p.labels(f))


def _png_matrix(fig, p: ParetoView) -> None:
    m = len(p.objectives)
    n = m - 1
    w, h = fig.bbox.width, fig.bbox.height
    left, top, gap = 80, 110, 20  # px; the panels share axes along rows and columns
    cell = PARETO_PANEL_PX
    for i in range(n):  # row i: y = objective i + 1
        for j in range(i + 1):  # column j: x = objective j
            x0 = left + j * cell
            y0 = h - top - (i + 1) * cell
            ax = fig.add_axes(((x0 + gap) / w, (y0 + gap * 2) / h, (cell - gap * 1.5) / w, (cell - gap * 2.5) / h))
            (mxj, _), (myi, _) = p.objectives[j], p.objectives[i + 1]
            _error_bars(ax, p, (p.ranked[mxj], p.unranked[mxj]), myi, xcol=mxj, ycol=myi)
            _rank_scatter(fig, ax, p.others, p.others[mxj], p.others[myi], p, colorbar=False, size=30)
            _overlap_scatter(ax, p.overlapping, p.overlapping[mxj], p.overlapping[myi], size=40)
            _unranked_scatter(ax, p.unranked, p.unranked[mxj], p.unranked[myi], size=30)
            _front_scatter(ax, p.front, p.front[mxj], p.front[myi], size=70)
            ax.grid(alpha=0.3)
            ax.margins(0.1)
            ax.tick_params(labelsize=8)
            if i == n - 1:
                ax.set_xlabel(axis_label(*p.objectives[j]), fontsize=10)
            if j == 0:
                ax.set_ylabel(axis_label(*p.objectives[i + 1]), fontsize=10)
            _label_points(ax, p.front[mxj], p.front[myi], p.labels(p.front))
    # The empty upper triangle holds the legend and the rank colourbar.
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            color=FRONT_COLOR,
            markeredgecolor=FRONT_EDGE,
            markersize=10,
            label="front (rank 1)",
        )
    ]
    if len(p.others):
        handles.append(Line2D([], [], marker="o", ls="", color=RANK_COLORS[0], markersize=8, label="other ranks"))
    if len(p.overlapping):
        handles.append(
            Line2D([], [], marker="o", ls="", mfc="none", mec=FRONT_EDGE, mew=1.8, markersize=8, label=OVERLAP_NAME)
        )
    if len(p.unranked):
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                ls="",
                mfc="none",
                mec=UNRANKED_COLOR,
                mew=1.4,
                markersize=8,
                label="unranked (running, failed, …)",
            )
        )
    if p.any_stopped:
        handles.append(_stopped_handle())
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(1 - 30 / w, 1 - top / h), fontsize=10, frameon=False)
    if len(p.others):
        cmin, cmax = rank_range(p)
        cax = fig.add_axes((1 - 250 / w, 1 - (top + 150) / h, 180 / w, 14 / h))
        sm = plt.cm.ScalarMappable(cmap=_rank_cmap(), norm=plt.Normalize(cmin, cmax))
        cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
        cb.set_label("pareto.rank", fontsize=9)
        cb.ax.tick_params(labelsize=8)
        if cmax - cmin <= 10:
            cb.set_ticks(range(cmin, cmax + 1))
