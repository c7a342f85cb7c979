"""The study's comparison as pictures: the Pareto front as an interactive, self-contained plotly
page and as a PNG, and parameter importance as bars.

    objectives = [("val/mre_mm", "min"), ("cost/gflops", "min")]
    html = pareto_html(table, objectives, searched=["optim.lr", "target.schedule"], title="farnet")
    pareto_png(table, objectives, "farnet", out / "pareto.png", searched=["optim.lr"])   # 1000×750 px
    importance_png({"optim.lr": 0.61, "target.schedule": 0.22}, out / "importance.png", "farnet")

Every point is a trial, labelled by its recipe (`adaloss, lr 3e-4`: plots.recipe) where there is
room, its trial id in the hover text. A trial ASHA stopped early is a downward triangle; a trial
with every objective but no rank (running, failed, …) a hollow grey circle. One objective is drawn
against a cost (`cost/gflops` where trials differ in it, else `cost/epoch_s`), so that what each
gain costs is visible.

A table of configurations with repeats (dashboards.effects.per_configuration: `m.ci_low`,
`m.ci_high`, `repeats.n` > 1) is drawn at its means with the 95 % intervals as grey error bars, and
a configuration the front does not beat beyond the intervals (effects.overlaps_front) as a hollow
FRONT_EDGE circle with its own legend entry; with one repeat each it is the picture of the trials.

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
from matplotlib.ticker import MaxNLocator

from dashboards.plots import (
    COST_AXES,
    EMPTY_PARETO_TEXT,
    FRONT_COLOR,
    IMPORTANCE_MAX_BARS,
    IMPORTANCE_PNG_W,
    MAX_FRONT_LABELS,
    PARETO_PANEL_PX,
    PARETO_PNG_SIZE,
    RANK_COLORS,
    STOPPED_SYMBOL,
    UNRANKED_COLOR,
    axis_label,
    check_objectives,
    figure,
    fmt,
    plt,
    prepare_path,
    recipe,
    save,
)
from dashboards.effects import overlaps_front
from dashboards.ranking import describe_excluded, pareto_ranks
from study.schema import Status

FRONT_EDGE = "#7a1f08"  # the front's outline and label colour
ERROR_COLOR = "#8a8a8a"  # 95 % intervals (error bars), behind the points
OVERLAP_NAME = "interval overlaps the front's"  # a hollow FRONT_EDGE marker: not told apart from the front
COST_FRONT_COLOR = "#444444"  # one objective: the trials no cheaper trial beats

# ---------------------------------------------------------------------------------------- Pareto data


class _Pareto:
    """The trials of a study table that can be drawn: the ranked ones best first, and the unranked
    ones that have every objective; with one objective, the cost axis and its trade-off front."""

    def __init__(self, table: pd.DataFrame, objectives: list[tuple[str, str]], searched: Sequence[str] = ()):
        for col in ("trial", "pareto.rank"):
            if col not in table.columns:
                raise ValueError(f"pareto table: no {col!r} column; have {list(table.columns)}")
        self.objectives = objectives
        self.metrics = [m for m, _ in objectives]
        self.searched = [s for s in searched if s in table.columns]
        values = pd.DataFrame({m: pd.to_numeric(table[m], errors="coerce") if m in table else np.nan
                               for m in self.metrics}, index=table.index)
        rank = pd.to_numeric(table["pareto.rank"], errors="coerce")
        finite = np.isfinite(values.to_numpy(dtype=float)).all(axis=1)
        # A rank with a non-finite objective cannot be placed on an axis (rank_table never gives one).
        placed = rank.notna() & finite
        ranked = table[placed].copy()
        ranked["pareto.rank"] = rank[placed].astype(int)
        unranked = table[rank.isna() & finite].copy()
        for m in self.metrics:
            ranked[m] = values.loc[placed, m].astype(float)
            unranked[m] = values.loc[unranked.index, m].astype(float)
        # Best first: by rank, then by the first objective in its better direction.
        m0, mode0 = objectives[0]
        ranked = ranked.sort_values(["pareto.rank", m0], ascending=[True, mode0 == "min"], kind="stable")
        self.cost = cost_axis(table, ranked, self.metrics) if len(objectives) == 1 else None
        if self.cost:
            for rows in (ranked, unranked):
                rows[self.cost] = pd.to_numeric(rows[self.cost], errors="coerce").astype(float)
            unranked = unranked[np.isfinite(unranked[self.cost].to_numpy(dtype=float))]
        self.ranked = ranked.reset_index(drop=True)
        self.unranked = unranked.reset_index(drop=True)
        # Configurations with repeats (dashboards.effects.per_configuration): 95 % intervals per objective.
        self.intervals = {m for m in self.metrics if f"{m}.ci_low" in table
                          and np.isfinite(pd.to_numeric(table[f"{m}.ci_low"], errors="coerce").astype(float)).any()}
        self.repeated = "repeats.n" in table and bool((pd.to_numeric(table["repeats.n"], errors="coerce") > 1).any())
        overlap = overlaps_front(self.ranked, objectives).to_numpy() if self.intervals else \
            np.zeros(len(self.ranked), dtype=bool)
        self.front = self.ranked[self.ranked["pareto.rank"] == 1]
        self.others = self.ranked[(self.ranked["pareto.rank"] > 1).to_numpy() & ~overlap]
        self.overlapping = self.ranked[overlap]  # not on the front, but not told apart from it either
        self.overlap = overlap
        self.max_rank = int(self.ranked["pareto.rank"].max()) if len(self.ranked) else 0
        if self.cost:  # the trials no cheaper-or-equal trial beats on the objective, cheapest first
            both = self.ranked[[m0, self.cost]].to_numpy(dtype=float)
            self.cost_front = self.ranked[pareto_ranks(both, [mode0, "min"]) == 1].sort_values(
                [self.cost, m0], ascending=[True, mode0 == "min"], kind="stable")
        self.any_stopped = bool(stopped(self.ranked).any() or stopped(self.unranked).any())
        n, nf = len(self.ranked), len(self.front)
        self.unit = "configuration" if self.repeated else "trial"
        self.subtitle = f"{n} {self.unit}{'s' if n != 1 else ''} ranked, front of {nf}"
        if self.repeated:
            self.subtitle += " on the means (bars: 95 % intervals)"
            if len(self.overlapping):
                self.subtitle += f", {len(self.overlapping)} overlapping it"
        excluded = describe_excluded(table, objectives)  # the wording the CLI prints
        if excluded:
            self.subtitle += f"; {excluded}"

    def labels(self, rows: pd.DataFrame) -> list[str]:
        """Each row's recipe (its trial id when nothing was searched)."""
        return [recipe(r, self.searched) or str(r["trial"]) for _, r in rows.iterrows()]

    def hover(self, rows: pd.DataFrame) -> list[str]:
        out = []
        for (_, r), label in zip(rows.iterrows(), self.labels(rows)):
            rank = r["pareto.rank"]
            lines = [f"<b>{html_lib.escape(label)}</b>"] if label != str(r["trial"]) else []
            if self.repeated:
                lines += [f"config.id {html_lib.escape(str(r['trial']))} (trials {html_lib.escape(fmt(r.get('trials')))})"]
            else:
                lines += [f"trial {html_lib.escape(str(r['trial']))}"]
            lines += [f"status: {html_lib.escape(fmt(r.get('status')))}",
                      f"pareto.rank: {'unranked' if pd.isna(rank) else int(rank)}"]
            lines += [self._value(r, m) for m in self.metrics]
            if self.repeated:
                lines.append(f"repeats.n: {fmt(r.get('repeats.n'))}, repeats.failed: {fmt(r.get('repeats.failed'))}")
            if self.cost:
                lines.append(f"{self.cost}: {fmt(r[self.cost])}")
            lines += [f"{p}: {html_lib.escape(fmt(r.get(p)))}" for p in self.searched]
            out.append("<br>".join(lines))
        return out


    def _value(self, r, m: str) -> str:
        """'val/mre_mm: 4.2 [3.703, 4.697] (95 % CI)', or the value alone without an interval."""
        lo, hi = r.get(f"{m}.ci_low"), r.get(f"{m}.ci_high")
        if m in self.intervals and fmt(lo) != "—" and lo != hi:  # a cost measured alike in every repeat: no interval
            return f"{m}: {fmt(r[m])} [{fmt(lo)}, {fmt(hi)}] (95 % CI)"
        return f"{m}: {fmt(r[m])}"

    def errors(self, rows: pd.DataFrame, col) -> tuple[np.ndarray, np.ndarray] | None:
        """(below, above) the mean of each row's 95 % interval of metric `col` (0 without one), or None."""
        if not isinstance(col, str) or col not in self.intervals or not len(rows):
            return None
        mean = rows[col].astype(float).to_numpy()
        lo = pd.to_numeric(rows[f"{col}.ci_low"], errors="coerce").astype(float).to_numpy()
        hi = pd.to_numeric(rows[f"{col}.ci_high"], errors="coerce").astype(float).to_numpy()
        if not np.isfinite(lo).any():
            return None
        return np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)


def stopped(rows: pd.DataFrame) -> np.ndarray:
    """Which rows ASHA stopped early (bool, one per row)."""
    if "status" not in rows:
        return np.zeros(len(rows), dtype=bool)
    return (rows["status"].astype(str) == Status.STOPPED_EARLY.value).to_numpy()


def cost_axis(table: pd.DataFrame, rows: pd.DataFrame, objectives: Sequence[str]) -> str | None:
    """The cost one objective is drawn against: the first of COST_AXES (`cost/gflops`, `cost/epoch_s`)
    that is not an objective and that every row has, `cost/gflops` only where rows differ in it."""
    for metric in COST_AXES:
        if metric in objectives or metric not in table.columns:
            continue
        v = pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float) if len(rows) else np.zeros(0)
        if len(v) and np.isfinite(v).all() and (metric != "cost/gflops" or len(np.unique(v)) > 1):
            return metric
    return None


def _rank_colorscale() -> list[list]:
    return [[0.0, RANK_COLORS[0]], [1.0, RANK_COLORS[1]]]


def _rank_range(p: _Pareto) -> tuple[int, int]:
    return 2, max(3, p.max_rank)  # cmin < cmax even when only rank 2 exists


def _front_order(front: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    return front.sort_values(metric, ascending=mode == "min", kind="stable")


def _grouped_labels(xs, ys, labels: list[str]) -> tuple[list[float], list[float], list[str]]:
    """One label per distinct point: trials at identical coordinates share it ('a / b')."""
    groups: dict[tuple[float, float], list[str]] = {}
    for x, y, t in zip(xs, ys, labels):
        names = groups.setdefault((float(x), float(y)), [])
        if t not in names:
            names.append(t)
    if len(groups) > MAX_FRONT_LABELS:
        return [], [], []
    return [x for x, _ in groups], [y for _, y in groups], [" / ".join(v) for v in groups.values()]


# --------------------------------------------------------------------------------------- Pareto HTML


def pareto_html(table: pd.DataFrame, objectives: list[tuple[str, str]], searched: list[str], title: str) -> str:
    """A self-contained HTML page (plotly.js embedded) comparing the study's trials: pareto_figure's.

    The page's <title> is `title — subtitle` (the subtitle counts the ranked and unranked trials)."""
    objectives = check_objectives(objectives)
    subtitle = _Pareto(table, objectives, searched).subtitle
    fig = pareto_figure(table, objectives, searched, title)
    page = fig.to_html(include_plotlyjs=True, full_html=True, config={"responsive": True, "displaylogo": False})
    # plotly escapes "/" inside its JSON; the <title> keeps the names readable (tab, search, tests).
    head = (f"<title>{html_lib.escape(title)} — {html_lib.escape(subtitle)}</title>\n"
            "    <style>body {margin: 0;}</style>")  # the plot fills the window (or iframe), no scrollbar
    return page.replace("<head>", f"<head>\n    {head}", 1)


def pareto_figure(table: pd.DataFrame, objectives: list[tuple[str, str]], searched: Sequence[str],
                  title: str) -> go.Figure:
    """The plotly figure of pareto_html.

    table: one row per trial with `trial`, `status`, `pareto.rank` (Int64, 1 = non-dominated front,
    <NA> = unranked), one float column per objective metric, one column per searched param, and
    any other final metric (`cost/gflops`, `cost/epoch_s`, …). The front is pareto.rank == 1.
    1 objective: against the cost axis (cost_axis), the best (rank 1) a star, the trials no cheaper
    trial beats joined by a staircase and labelled; with no cost column, the trials best-first.
    2: a scatter, the front bigger in FRONT_COLOR joined by its attainment staircase and labelled,
    other ranks on a sequential scale. 3+: a scatter matrix (go.Splom) of every objective pair.
    Stopped early: a triangle (STOPPED_SYMBOL); unranked with every objective: hollow grey; both
    have a legend entry. Hover: recipe, trial id, status, rank, each objective, each searched param
    ('—' when a conditional param was inactive). Trials missing an objective are not drawn; the
    subtitle counts them and names the missing metric(s).
    """
    objectives = check_objectives(objectives)
    p = _Pareto(table, objectives, searched)
    fig = go.Figure()
    if not len(p.ranked) and not len(p.unranked):
        fig.add_annotation(text=EMPTY_PARETO_TEXT, x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font=dict(size=20, color="#666"))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    elif len(objectives) == 1:
        (_html_cost if p.cost else _html_one)(fig, p)
    elif len(objectives) == 2:
        _html_two(fig, p)
    else:
        _html_matrix(fig, p)
    if len(objectives) <= 2 and (len(p.ranked) or len(p.unranked)):
        _html_keys(fig, p)
    fig.update_layout(
        template="plotly_white",
        font=dict(family="DejaVu Sans, Arial, sans-serif", size=14),
        title=dict(text=html_lib.escape(title), subtitle=dict(text=html_lib.escape(p.subtitle)), x=0.02,
                   font=dict(size=20)),
        hoverlabel=dict(font_size=13, align="left"),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        margin=dict(t=110, l=80, r=40, b=70),
    )
    return fig


def _marker_line() -> dict:
    return dict(width=1, color="white")


def _symbols(rows: pd.DataFrame, base: str = "circle") -> list[str]:
    """Per point: base, or its stopped-early form (a downward triangle; a star gets one inside)."""
    early = "star-triangle-down" if base == "star" else STOPPED_SYMBOL[0]
    return [early if s else base for s in stopped(rows)]


def _sizes(rows: pd.DataFrame, size: float) -> list[float]:
    """A triangle looks smaller than a disc of the same size: 1.3 times as big. (Per-point sizes
    make plotly draw a bubble chart, at opacity 0.7 unless the marker says 1.)"""
    return [1.3 * size if s else size for s in stopped(rows)]


def _rank_marker(p: _Pareto, rows: pd.DataFrame, size: int = 10, colorbar_len: float = 0.6) -> dict:
    cmin, cmax = _rank_range(p)
    return dict(size=_sizes(rows, size), opacity=1, color=rows["pareto.rank"], colorscale=_rank_colorscale(),
                cmin=cmin, cmax=cmax, line=_marker_line(), symbol=_symbols(rows),
                colorbar=dict(title=dict(text="pareto.rank"), thickness=14, len=colorbar_len,
                              dtick=1 if cmax - cmin <= 10 else None))


def _front_marker(rows: pd.DataFrame, size: int, base: str = "circle") -> dict:
    return dict(size=_sizes(rows, size), opacity=1, color=FRONT_COLOR, line=dict(width=1.5, color=FRONT_EDGE),
                symbol=_symbols(rows, base))


def _overlap_marker(rows: pd.DataFrame, size: int = 12) -> dict:
    open_ = ["triangle-down-open" if s else "circle-open" for s in stopped(rows)]
    return dict(size=_sizes(rows, size), opacity=1, color=FRONT_EDGE, line=dict(width=2, color=FRONT_EDGE),
                symbol=open_)


def _unranked_marker(rows: pd.DataFrame, size: int = 10) -> dict:
    open_ = ["triangle-down-open" if s else "circle-open" for s in stopped(rows)]
    return dict(size=_sizes(rows, size), opacity=1, color=UNRANKED_COLOR, line=dict(width=1.5, color=UNRANKED_COLOR),
                symbol=open_)


def _finished_first(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows, stopped-early ones last: plotly draws a trace's legend symbol from its first point."""
    return rows.iloc[np.argsort(stopped(rows), kind="stable")]


def _points(fig: go.Figure, p: _Pareto, rows: pd.DataFrame, x: str | np.ndarray, y: str, name: str, marker,
            **kw) -> None:
    """A trace of these rows at (x, y): x a column name, or positions per row; marker(rows) -> dict."""
    if not len(rows):
        return
    rows = rows.assign(_x=rows[x] if isinstance(x, str) else np.asarray(x, dtype=float))
    rows = _finished_first(rows)
    for axis, col in (("error_x", x), ("error_y", y)):  # the 95 % intervals of configurations with repeats
        bars = p.errors(rows, col)
        if bars is not None:
            kw[axis] = dict(type="data", symmetric=False, arrayminus=bars[0], array=bars[1], color=ERROR_COLOR,
                            thickness=1.2, width=3)
    fig.add_trace(go.Scatter(x=rows["_x"], y=rows[y], mode="markers", name=name, text=p.hover(rows),
                             hovertemplate="%{text}<extra></extra>", marker=marker(rows), **kw))


def _html_labels(fig: go.Figure, p: _Pareto, rows: pd.DataFrame, x: str, y: str, color: str = FRONT_EDGE) -> None:
    """Recipes next to these points (identical points share one), none beyond MAX_FRONT_LABELS.
    Points sorted along x take turns above and below, so that neighbours' labels do not collide."""
    rows = rows.sort_values(x, kind="stable")
    xs, ys, text = _grouped_labels(rows[x], rows[y], p.labels(rows))
    if text:  # invisible markers as big as the points: plotly sets the text off by their size
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=text, name="labels",
                                 textposition=["top right" if i % 2 == 0 else "bottom right" for i in range(len(xs))],
                                 marker=dict(size=16, opacity=0), textfont=dict(size=12, color=color),
                                 hoverinfo="skip", showlegend=False, cliponaxis=False))


def _html_keys(fig: go.Figure, p: _Pareto) -> None:
    """Legend entries for the marker forms: stopped early, unranked (the latter is a trace already)."""
    if p.any_stopped:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="stopped early (ASHA)",
                                 marker=dict(size=11, color="#555555", symbol=STOPPED_SYMBOL[0]), hoverinfo="skip"))


def _html_unranked(fig: go.Figure, p: _Pareto, x: str, y: str) -> None:
    _points(fig, p, p.unranked, x, y, "unranked (running, failed, …)", _unranked_marker)


def _html_overlapping(fig: go.Figure, p: _Pareto, rows: pd.DataFrame, x, y: str) -> None:
    _points(fig, p, rows, x, y, OVERLAP_NAME, _overlap_marker)


def _html_one(fig: go.Figure, p: _Pareto) -> None:
    """One objective and no cost column: the trials best first (unranked ones after them)."""
    metric, mode = p.objectives[0]
    r, u = p.ranked.assign(order=np.arange(1, len(p.ranked) + 1)), p.unranked
    best = (r["pareto.rank"] == 1).to_numpy()
    _points(fig, p, r[~best & ~p.overlap], "order", metric, f"other {p.unit}s", lambda rows: _rank_marker(p, rows))
    _html_overlapping(fig, p, r[p.overlap], "order", metric)
    _points(fig, p, r[best], "order", metric, "best (rank 1)", lambda rows: _front_marker(rows, 16, "star"))
    _html_labels(fig, p, r[best], "order", metric)
    _points(fig, p, u, np.arange(len(r) + 1, len(r) + len(u) + 1), metric, "unranked (running, failed, …)",
            _unranked_marker)
    ids = list(r["trial"]) + list(u["trial"])
    ticks = dict(tickmode="array", tickvals=np.arange(1, len(ids) + 1), ticktext=ids, tickangle=-45) \
        if len(ids) <= 40 else {}
    fig.update_xaxes(title_text=f"{p.unit}s, best first", **ticks)
    fig.update_yaxes(title_text=axis_label(metric, mode, "y"))


def _html_cost(fig: go.Figure, p: _Pareto) -> None:
    """One objective against the cost: who is best, and what the cheaper trials give up."""
    metric, mode = p.objectives[0]
    cost, r = p.cost, p.ranked
    best = (r["pareto.rank"] == 1).to_numpy()
    _points(fig, p, r[~best & ~p.overlap], cost, metric, f"other {p.unit}s", lambda rows: _rank_marker(p, rows))
    _html_overlapping(fig, p, r[p.overlap], cost, metric)
    _html_unranked(fig, p, cost, metric)
    cf = p.cost_front
    fig.add_trace(go.Scatter(x=cf[cost], y=cf[metric], mode="lines", name=f"best for its {cost}",
                             line=dict(shape="hv", color=COST_FRONT_COLOR, width=1.5, dash="dot"), hoverinfo="skip"))
    _points(fig, p, r[best], cost, metric, "best (rank 1)", lambda rows: _front_marker(rows, 18, "star"))
    _html_labels(fig, p, cf, cost, metric, color="#222222")
    fig.update_xaxes(title_text=axis_label(cost, "min", "x"))
    fig.update_yaxes(title_text=axis_label(metric, mode, "y"))


def _html_two(fig: go.Figure, p: _Pareto) -> None:
    (mx, modex), (my, modey) = p.objectives
    o, f = p.others, _front_order(p.front, mx, modex)
    _points(fig, p, o, mx, my, "other ranks", lambda rows: _rank_marker(p, rows))
    _html_overlapping(fig, p, p.overlapping, mx, my)
    _html_unranked(fig, p, mx, my)
    # The attainment staircase: sorted better-first along x, horizontal then vertical.
    fig.add_trace(go.Scatter(
        x=f[mx], y=f[my], mode="lines", line=dict(shape="hv", color=FRONT_COLOR, width=2, dash="dot"),
        hoverinfo="skip", showlegend=False))
    _points(fig, p, f, mx, my, "front (rank 1)", lambda rows: _front_marker(rows, 15))
    _html_labels(fig, p, f, mx, my)
    fig.update_xaxes(title_text=axis_label(mx, modex, "x"))
    fig.update_yaxes(title_text=axis_label(my, modey, "y"))


def _html_matrix(fig: go.Figure, p: _Pareto) -> None:
    o, f, u = (_finished_first(rows) for rows in (p.others, p.front, p.unranked))
    labels = [axis_label(m, mode) for m, mode in p.objectives]

    def dims(rows):
        return [dict(label=lab, values=rows[m]) for lab, (m, _) in zip(labels, p.objectives)]

    common = dict(diagonal=dict(visible=False), showupperhalf=False, hovertemplate="%{text}<extra></extra>")
    if len(o):
        marker = _rank_marker(p, o, size=8, colorbar_len=0.5)
        fig.add_trace(go.Splom(dimensions=dims(o), name="other ranks", text=p.hover(o), **common,
                               marker=dict(marker, showscale=True)))
    if len(p.overlapping):
        v = _finished_first(p.overlapping)
        fig.add_trace(go.Splom(dimensions=dims(v), name=OVERLAP_NAME, text=p.hover(v), **common,
                               marker=_overlap_marker(v, size=9)))
    if len(u):
        fig.add_trace(go.Splom(dimensions=dims(u), name="unranked (running, failed, …)", text=p.hover(u), **common,
                               marker=_unranked_marker(u, size=8)))
    fig.add_trace(go.Splom(dimensions=dims(f), name="front (rank 1)", text=p.hover(f), **common,
                           marker=_front_marker(f, 12)))
    if p.any_stopped:  # a legend key on the matrix's axes, drawn nowhere
        fig.add_trace(go.Splom(dimensions=[dict(label=lab, values=[None]) for lab in labels],
                               name="stopped early (ASHA)", **common,
                               marker=dict(size=10, color="#555555", symbol=STOPPED_SYMBOL[0])))
    fig.update_layout(dragmode="select", hovermode="closest", showlegend=True)


# ---------------------------------------------------------------------------------------- Pareto PNG


def pareto_png_size(num_objectives: int) -> tuple[int, int]:
    """(width, height) px of pareto_png: 1000×750 for 1 or 2 objectives; for M ≥ 3, a lower-triangle
    grid of (M - 1) × (M - 1) panels of PARETO_PANEL_PX: (120 + 400·(M - 1), 170 + 400·(M - 1))."""
    if num_objectives <= 2:
        return PARETO_PNG_SIZE
    side = PARETO_PANEL_PX * (num_objectives - 1)
    return 120 + side, 170 + side


def pareto_png(table: pd.DataFrame, objectives: list[tuple[str, str]], title: str, path,
               searched: Sequence[str] = ()) -> Path:
    """The pareto_html picture as a static PNG of pareto_png_size(len(objectives)) px.

    Front points (rank 1) are big, in FRONT_COLOR, labelled with their recipes (identical points
    share one label; a label that would overlap another is left out; none beyond MAX_FRONT_LABELS
    points); other ranks on a sequential scale with a colourbar; stopped early a triangle, unranked
    hollow grey. One objective: against its cost axis, the trials no cheaper trial beats labelled.
    3+ objectives: panel (i, j) of the lower triangle plots objective j (x) against objective i + 1 (y).
    """
    objectives = check_objectives(objectives)
    path = prepare_path(path)
    p = _Pareto(table, objectives, searched)
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


def _rank_scatter(fig, ax, rows: pd.DataFrame, x, y, p: _Pareto, colorbar: bool, size=55, label="other ranks"):
    if not len(rows):
        return None
    cmin, cmax = _rank_range(p)
    sc = None
    for xs, ys, marker, keep in _split(rows, x, y):
        if len(xs):
            sc = ax.scatter(xs, ys, c=rows["pareto.rank"].to_numpy()[keep], cmap=_rank_cmap(), vmin=cmin, vmax=cmax,
                            s=size if marker == "o" else 1.5 * size, marker=marker, edgecolors="white", linewidths=0.6, label=label, zorder=2)
            label = None
    if colorbar:
        cb = fig.colorbar(sc, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("pareto.rank")
        if cmax - cmin <= 10:
            cb.set_ticks(range(cmin, cmax + 1))
        else:
            cb.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return sc


def _unranked_scatter(ax, rows: pd.DataFrame, x, y, size=55):
    label = "unranked (running, failed, …)"
    for xs, ys, marker, _ in _split(rows, x, y):
        if len(xs):
            ax.scatter(xs, ys, s=size if marker == "o" else 1.5 * size, marker=marker, facecolors="none",
                       edgecolors=UNRANKED_COLOR, linewidths=1.4,
                       label=label, zorder=2)
            label = None


def _front_scatter(ax, rows: pd.DataFrame, x, y, size=110, marker="o", label="front (rank 1)"):
    """Front points in FRONT_COLOR: `marker` (a star for the best of one objective), a triangle if stopped early."""
    for xs, ys, m, _ in _split(rows, x, y):
        if len(xs):
            finished = m == "o"
            ax.scatter(xs, ys, s=size if finished or marker == "o" else 0.6 * size, marker=marker if finished else m,
                       c=FRONT_COLOR, edgecolors=FRONT_EDGE, linewidths=1.0, label=label, zorder=3)
            label = None


def _overlap_scatter(ax, rows: pd.DataFrame, x, y, size=70):
    """Configurations not on the front whose 95 % intervals overlap a front configuration's: hollow FRONT_EDGE."""
    label = OVERLAP_NAME
    for xs, ys, marker, _ in _split(rows, x, y):
        if len(xs):
            ax.scatter(xs, ys, s=size if marker == "o" else 1.5 * size, marker=marker, facecolors="none",
                       edgecolors=FRONT_EDGE, linewidths=1.8, label=label, zorder=2.2)
            label = None


def _error_bars(ax, p: _Pareto, x, y, xcol=None, ycol=None) -> None:
    """The 95 % intervals of every drawn configuration (ranked and unranked) as grey bars behind them."""
    for rows, xs in ((p.ranked, x[0]), (p.unranked, x[1])):
        xerr, yerr = p.errors(rows, xcol), p.errors(rows, ycol)
        if len(rows) and (xerr is not None or yerr is not None):
            ax.errorbar(np.asarray(xs, dtype=float), rows[y].astype(float), xerr=None if xerr is None else np.stack(xerr),
                        yerr=None if yerr is None else np.stack(yerr), fmt="none", ecolor=ERROR_COLOR, elinewidth=1.0,
                        capsize=2.5, zorder=1.5)


def _stopped_handle() -> Line2D:
    return Line2D([], [], marker=STOPPED_SYMBOL[1], ls="", color="#555555", markersize=8, label="stopped early (ASHA)")


def _png_legend(ax, p: _Pareto) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if p.any_stopped:
        handles.append(_stopped_handle())
        labels.append("stopped early (ASHA)")
    ax.legend(handles, labels, loc="best", fontsize=9)


_LABEL_SPOTS = ((6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"),
                (-6, -4, "right", "top"))  # offsets in points, tried in this order


def _label_points(ax, xs, ys, labels: list[str], color: str = FRONT_EDGE) -> None:
    """Labels next to points; points at identical coordinates share one. Each label takes the
    first of four spots around its point that stays inside the axes and overlaps no earlier label;
    a label with no free spot is left out (the HTML page has every trial on hover).

    Call it last: it reads the axes' final limits and position to measure the labels."""
    gx, gy, texts = _grouped_labels(xs, ys, labels)
    if not texts:
        return
    ax.get_xlim(), ax.get_ylim()  # settles the autoscaled limits before measuring
    renderer = ax.figure.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    placed = []
    for x, y, text in zip(gx, gy, texts):
        for dx, dy, ha, va in _LABEL_SPOTS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=8, color=color, zorder=4)
            bb = ann.get_window_extent(renderer).padded(3)  # labels that merely touch read as one
            inside = box.x0 <= bb.x0 and bb.x1 <= box.x1 and box.y0 <= bb.y0 and bb.y1 <= box.y1
            if inside and not any(bb.overlaps(q) for q in placed):
                placed.append(bb)
                break
            ann.remove()


def _png_one(fig, ax, p: _Pareto) -> None:
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


def _png_cost(fig, ax, p: _Pareto) -> None:
    metric, mode = p.objectives[0]
    cost, r, cf = p.cost, p.ranked, p.cost_front
    best = (r["pareto.rank"] == 1).to_numpy()
    rest = ~best & ~p.overlap
    _error_bars(ax, p, (r[cost], p.unranked[cost]), metric, ycol=metric)
    _rank_scatter(fig, ax, r[rest], r.loc[rest, cost], r.loc[rest, metric], p, colorbar=True, label=f"other {p.unit}s")
    _overlap_scatter(ax, r[p.overlap], r.loc[p.overlap, cost], r.loc[p.overlap, metric])
    _unranked_scatter(ax, p.unranked, p.unranked[cost], p.unranked[metric])
    ax.step(cf[cost], cf[metric], where="post", color=COST_FRONT_COLOR, lw=1.3, ls=":", zorder=2.5,
            label=f"best for its {cost}")
    _front_scatter(ax, r[best], r.loc[best, cost], r.loc[best, metric], size=260, marker="*", label="best (rank 1)")
    ax.set_xlabel(axis_label(cost, "min", "x"))
    ax.set_ylabel(axis_label(metric, mode, "y"))
    ax.margins(0.08)
    ax.grid(alpha=0.3)
    _png_legend(ax, p)
    _label_points(ax, cf[cost], cf[metric], p.labels(cf), color="#222222")


def _png_two(fig, ax, p: _Pareto) -> None:
    (mx, modex), (my, modey) = p.objectives
    f = _front_order(p.front, mx, modex)
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


def _png_matrix(fig, p: _Pareto) -> None:
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
    handles = [Line2D([], [], marker="o", ls="", color=FRONT_COLOR, markeredgecolor=FRONT_EDGE, markersize=10,
                      label="front (rank 1)")]
    if len(p.others):
        handles.append(Line2D([], [], marker="o", ls="", color=RANK_COLORS[0], markersize=8, label="other ranks"))
    if len(p.overlapping):
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec=FRONT_EDGE, mew=1.8, markersize=8,
                              label=OVERLAP_NAME))
    if len(p.unranked):
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec=UNRANKED_COLOR, mew=1.4, markersize=8,
                              label="unranked (running, failed, …)"))
    if p.any_stopped:
        handles.append(_stopped_handle())
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(1 - 30 / w, 1 - top / h), fontsize=10,
               frameon=False)
    if len(p.others):
        cmin, cmax = _rank_range(p)
        cax = fig.add_axes((1 - 250 / w, 1 - (top + 150) / h, 180 / w, 14 / h))
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
