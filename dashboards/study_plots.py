"""The study's comparison as pictures: the Pareto front as an interactive, self-contained plotly
page and as a PNG, and parameter importance as bars.

    objectives = [("val/mre_mm", "min"), ("cost/gflops", "min")]
    html = pareto_html(table, objectives, searched=["optim.lr", "target.schedule"], title="farnet")
    pareto_png(table, objectives, "farnet", out / "pareto.png")        # 1000×750 px
    importance_png({"optim.lr": 0.61, "target.schedule": 0.22}, out / "importance.png", "farnet")

The page embeds plotly.js: clusters have no internet, and MLflow shows HTML artefacts in an iframe.
"""

from __future__ import annotations

import html as html_lib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.lines import Line2D

from dashboards.plots import (
    EMPTY_PARETO_TEXT,
    FRONT_COLOR,
    IMPORTANCE_MAX_BARS,
    IMPORTANCE_PNG_W,
    MAX_FRONT_LABELS,
    PARETO_PANEL_PX,
    PARETO_PNG_SIZE,
    RANK_COLORS,
    axis_label,
    check_objectives,
    figure,
    fmt,
    plt,
    prepare_path,
    save,
)
from dashboards.ranking import describe_excluded

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
                     f"status: {html_lib.escape(fmt(r.get('status')))}",
                     f"pareto.rank: {int(r['pareto.rank'])}"]
            lines += [f"{m}: {fmt(r[m])}" for m in self.metrics]
            lines += [f"{p}: {html_lib.escape(fmt(r.get(p)))}" for p in searched]
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
    objectives = check_objectives(objectives)
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
    fig.update_yaxes(title_text=axis_label(metric, mode, "y"))


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
    fig.update_xaxes(title_text=axis_label(mx, modex, "x"))
    fig.update_yaxes(title_text=axis_label(my, modey, "y"))


def _html_matrix(fig: go.Figure, p: _Pareto, searched: list[str]) -> None:
    o, f = p.others, p.front
    cmin, cmax = _rank_range(p)
    labels = [axis_label(m, mode) for m, mode in p.objectives]

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
    objectives = check_objectives(objectives)
    path = prepare_path(path)
    p = _Pareto(table, objectives)
    fig = figure(pareto_png_size(len(objectives)))
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
    return save(fig, path)


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
    ax.set_ylabel(axis_label(metric, mode, "y"))
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
    ax.set_xlabel(axis_label(mx, modex, "x"))
    ax.set_ylabel(axis_label(my, modey, "y"))
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
                ax.set_xlabel(axis_label(*p.objectives[j]), fontsize=10)
            if j == 0:
                ax.set_ylabel(axis_label(*p.objectives[i + 1]), fontsize=10)
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
    path = prepare_path(path)
    items = sorted(((str(k), float(v)) for k, v in importances.items()),
                   key=lambda kv: -kv[1] if math.isfinite(kv[1]) else math.inf)
    shown = items[:IMPORTANCE_MAX_BARS]
    fig = figure(importance_png_size(len(items)))
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
        return save(fig, path)
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
    return save(fig, path)
