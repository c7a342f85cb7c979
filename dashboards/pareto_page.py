"""The Pareto comparison as an interactive, self-contained plotly page (pareto_view.ParetoView drawn).

    objectives = [("val/mre_mm", "min"), ("cost/gflops", "min")]
    html = pareto_html(table, objectives, searched=["optim.lr", "target.schedule"], title="farnet")

Every point is a trial, labelled by its recipe (`adaloss, lr 3e-4`: plots.recipe) where there is
room, its trial id in the hover text. A trial ASHA stopped early is a downward triangle; a trial
with every objective but no rank (running, failed, …) a hollow grey circle. One objective is drawn
against a cost (`cost/gflops` where trials differ in it, else `cost/epoch_s`), so that what each
gain costs is visible. Configurations with repeats are drawn at their means with 95 % intervals as
grey error bars, and those the front does not beat beyond the intervals as hollow FRONT_EDGE circles.

The page embeds plotly.js: clusters have no internet, and MLflow shows HTML artefacts in an iframe.
The same picture as a PNG is pareto_image.py's.
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.pareto_view import ParetoView, front_order, grouped_labels, rank_range, stopped
from dashboards.plots import (
    COST_FRONT_COLOR,
    EMPTY_PARETO_TEXT,
    ERROR_COLOR,
    FRONT_COLOR,
    FRONT_EDGE,
    OVERLAP_NAME,
    RANK_COLORS,
    STOPPED_SYMBOL,
    UNRANKED_COLOR,
    axis_label,
    check_objectives,
    fmt,
)


def pareto_html(table: pd.DataFrame, objectives: list[tuple[str, str]], searched: list[str], title: str) -> str:
    """A self-contained HTML page (plotly.js embedded) comparing the study's trials: pareto_figure's.

    The page's <title> is `title — subtitle` (the subtitle counts the ranked and unranked trials)."""
    objectives = check_objectives(objectives)
    subtitle = ParetoView(table, objectives, searched).subtitle
    fig = pareto_figure(table, objectives, searched, title)
    page = fig.to_html(include_plotlyjs=True, full_html=True, config={"responsive": True, "displaylogo": False})
    # plotly escapes "/" inside its JSON; the <title> keeps the names readable (tab, search, tests).
    head = (
        f"<title>{html_lib.escape(title)} — {html_lib.escape(subtitle)}</title>\n"
        "    <style>body {margin: 0;}</style>"
    )  # the plot fills the window (or iframe), no scrollbar
    return page.replace("<head>", f"<head>\n    {head}", 1)


def pareto_figure(
    table: pd.DataFrame, objectives: list[tuple[str, str]], searched: Sequence[str], title: str
) -> go.Figure:
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
    p = ParetoView(table, objectives, searched)
    fig = go.Figure()
    if not len(p.ranked) and not len(p.unranked):
        fig.add_annotation(
            text=EMPTY_PARETO_TEXT,
            x=0.5,
            y=0.5,
            xref="paper",
            yref="paper",
            showarrow=False,
            font=dict(size=20, color="#666"),
        )
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
        title=dict(
            text=html_lib.escape(title), subtitle=dict(text=html_lib.escape(p.subtitle)), x=0.02, font=dict(size=20)
        ),
        hoverlabel=dict(font_size=13, align="left"),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        margin=dict(t=110, l=80, r=40, b=70),
    )
    return fig


def _rank_colorscale() -> list[list]:
    return [[0.0, RANK_COLORS[0]], [1.0, RANK_COLORS[1]]]


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


def _rank_marker(p: ParetoView, rows: pd.DataFrame, size: int = 10, colorbar_len: float = 0.6) -> dict:
    cmin, cmax = rank_range(p)
    return dict(
        size=_sizes(rows, size),
        opacity=1,
        color=rows["pareto.rank"],
        colorscale=_rank_colorscale(),
        cmin=cmin,
        cmax=cmax,
        line=_marker_line(),
        symbol=_symbols(rows),
        colorbar=dict(
            title=dict(text="pareto.rank"), thickness=14, len=colorbar_len, dtick=1 if cmax - cmin <= 10 else None
        ),
    )


def _front_marker(rows: pd.DataFrame, size: int, base: str = "circle") -> dict:
    return dict(
        size=_sizes(rows, size),
        opacity=1,
        color=FRONT_COLOR,
        line=dict(width=1.5, color=FRONT_EDGE),
        symbol=_symbols(rows, base),
    )


def _overlap_marker(rows: pd.DataFrame, size: int = 12) -> dict:
    open_ = ["triangle-down-open" if s else "circle-open" for s in stopped(rows)]
    return dict(
        size=_sizes(rows, size), opacity=1, color=FRONT_EDGE, line=dict(width=2, color=FRONT_EDGE), symbol=open_
    )


def _unranked_marker(rows: pd.DataFrame, size: int = 10) -> dict:
    open_ = ["triangle-down-open" if s else "circle-open" for s in stopped(rows)]
    return dict(
        size=_sizes(rows, size),
        opacity=1,
        color=UNRANKED_COLOR,
        line=dict(width=1.5, color=UNRANKED_COLOR),
        symbol=open_,
    )


def _finished_first(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows, stopped-early ones last: plotly draws a trace's legend symbol from its first point."""
    return rows.iloc[np.argsort(stopped(rows), kind="stable")]


def _hover(p: ParetoView, rows: pd.DataFrame) -> list[str]:
    """Each row's hover text (HTML): recipe, trial id, status, rank, each objective, each searched param."""
    out = []
    for (_, r), label in zip(rows.iterrows(), p.labels(rows)):
        rank = r["pareto.rank"]
        lines = [f"<b>{html_lib.escape(label)}</b>"] if label != str(r["trial"]) else []
        if p.repeated:
            lines += [f"config.id {html_lib.escape(str(r['trial']))} (trials {html_lib.escape(fmt(r.get('trials')))})"]
        else:
            lines += [f"trial {html_lib.escape(str(r['trial']))}"]
        lines += [
            f"status: {html_lib.escape(fmt(r.get('status')))}",
            f"pareto.rank: {'unranked' if pd.isna(rank) else int(rank)}",
        ]
        lines += [p.value_text(r, m) for m in p.metrics]
        if p.repeated:
            lines.append(f"repeats.n: {fmt(r.get('repeats.n'))}, repeats.failed: {fmt(r.get('repeats.failed'))}")
        if p.cost:
            lines.append(f"{p.cost}: {fmt(r[p.cost])}")
        lines += [f"{name}: {html_lib.escape(fmt(r.get(name)))}" for name in p.searched]
        out.append("<br>".join(lines))
    return out


def _points(
    fig: go.Figure, p: ParetoView, rows: pd.DataFrame, x: str | np.ndarray, y: str, name: str, marker, **kw
) -> None:
    """A trace of these rows at (x, y): x a column name, or positions per row; marker(rows) -> dict."""
    if not len(rows):
        return
    rows = rows.assign(_x=rows[x] if isinstance(x, str) else np.asarray(x, dtype=float))
    rows = _finished_first(rows)
    for axis, col in (("error_x", x), ("error_y", y)):  # the 95 % intervals of configurations with repeats
        bars = p.errors(rows, col)
        if bars is not None:
            kw[axis] = dict(
                type="data",
                symmetric=False,
                arrayminus=bars[0],
                array=bars[1],
                color=ERROR_COLOR,
                thickness=1.2,
                width=3,
            )
    fig.add_trace(
        go.Scatter(
            x=rows["_x"],
            y=rows[y],
            mode="markers",
            name=name,
            text=_hover(p, rows),
            hovertemplate="%{text}<extra></extra>",
            marker=marker(rows),
            **kw,
        )
    )


def _html_labels(fig: go.Figure, p: ParetoView, rows: pd.DataFrame, x: str, y: str, color: str = FRONT_EDGE) -> None:
    """Recipes next to these points (identical points share one), none beyond MAX_FRONT_LABELS.
    Points sorted along x take turns above and below, so that neighbours' labels do not collide."""
    rows = rows.sort_values(x, kind="stable")
    xs, ys, text = grouped_labels(rows[x], rows[y], p.labels(rows))
    if text:  # invisible markers as big as the points: plotly sets the text off by their size
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                text=text,
                name="labels",
                textposition=["top right" if i % 2 == 0 else "bottom right" for i in range(len(xs))],
                marker=dict(size=16, opacity=0),
                textfont=dict(size=12, color=color),
                hoverinfo="skip",
                showlegend=False,
                cliponaxis=False,
            )
        )


def _html_keys(fig: go.Figure, p: ParetoView) -> None:
    """Legend entries for the marker forms: stopped early, unranked (the latter is a trace already)."""
    if p.any_stopped:
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name="stopped early (ASHA)",
                marker=dict(size=11, color="#555555", symbol=STOPPED_SYMBOL[0]),
                hoverinfo="skip",
            )
        )


def _html_unranked(fig: go.Figure, p: ParetoView, x: str, y: str) -> None:
    _points(fig, p, p.unranked, x, y, "unranked (running, failed, …)", _unranked_marker)


def _html_overlapping(fig: go.Figure, p: ParetoView, rows: pd.DataFrame, x, y: str) -> None:
    _points(fig, p, rows, x, y, OVERLAP_NAME, _overlap_marker)


def _html_one(fig: go.Figure, p: ParetoView) -> None:
    """One objective and no cost column: the trials best first (unranked ones after them)."""
    metric, mode = p.objectives[0]
    r, u = p.ranked.assign(order=np.arange(1, len(p.ranked) + 1)), p.unranked
    best = (r["pareto.rank"] == 1).to_numpy()
    _points(fig, p, r[~best & ~p.overlap], "order", metric, f"other {p.unit}s", lambda rows: _rank_marker(p, rows))
    _html_overlapping(fig, p, r[p.overlap], "order", metric)
    _points(fig, p, r[best], "order", metric, "best (rank 1)", lambda rows: _front_marker(rows, 16, "star"))
    _html_labels(fig, p, r[best], "order", metric)
    _points(
        fig, p, u, np.arange(len(r) + 1, len(r) + len(u) + 1), metric, "unranked (running, failed, …)", _unranked_marker
    )
    ids = list(r["trial"]) + list(u["trial"])
    ticks = (
        dict(tickmode="array", tickvals=np.arange(1, len(ids) + 1), ticktext=ids, tickangle=-45)
        if len(ids) <= 40
        else {}
    )
    fig.update_xaxes(title_text=f"{p.unit}s, best first", **ticks)
    fig.update_yaxes(title_text=axis_label(metric, mode, "y"))


def _html_cost(fig: go.Figure, p: ParetoView) -> None:
    """One objective against the cost: who is best, and what the cheaper trials give up."""
    metric, mode = p.objectives[0]
    cost, r = p.cost, p.ranked
    best = (r["pareto.rank"] == 1).to_numpy()
    _points(fig, p, r[~best & ~p.overlap], cost, metric, f"other {p.unit}s", lambda rows: _rank_marker(p, rows))
    _html_overlapping(fig, p, r[p.overlap], cost, metric)
    _html_unranked(fig, p, cost, metric)
    cf = p.cost_front
    fig.add_trace(
        go.Scatter(
            x=cf[cost],
            y=cf[metric],
            mode="lines",
            name=f"best for its {cost}",
            line=dict(shape="hv", color=COST_FRONT_COLOR, width=1.5, dash="dot"),
            hoverinfo="skip",
        )
    )
    _points(fig, p, r[best], cost, metric, "best (rank 1)", lambda rows: _front_marker(rows, 18, "star"))
    _html_labels(fig, p, cf, cost, metric, color="#222222")
    fig.update_xaxes(title_text=axis_label(cost, "min", "x"))
    fig.update_yaxes(title_text=axis_label(metric, mode, "y"))


def _html_two(fig: go.Figure, p: ParetoView) -> None:
    (mx, modex), (my, modey) = p.objectives
    o, f = p.others, front_order(p.front, mx, modex)
    _points(fig, p, o, mx, my, "other ranks", lambda rows: _rank_marker(p, rows))
    _html_overlapping(fig, p, p.overlapping, mx, my)
    _html_unranked(fig, p, mx, my)
    # The attainment staircase: sorted better-first along x, horizontal then vertical.
    fig.add_trace(
        go.Scatter(
            x=f[mx],
            y=f[my],
            mode="lines",
            line=dict(shape="hv", color=FRONT_COLOR, width=2, dash="dot"),
            hoverinfo="skip",
            showlegend=False,
        )
    )
    _points(fig, p, f, mx, my, "front (rank 1)", lambda rows: _front_marker(rows, 15))
    _html_labels(fig, p, f, mx, my)
    fig.update_xaxes(title_text=axis_label(mx, modex, "x"))
    fig.update_yaxes(title_text=axis_label(my, modey, "y"))


def _html_matrix(fig: go.Figure, p: ParetoView) -> None:
    o, f, u = (_finished_first(rows) for rows in (p.others, p.front, p.unranked))
    labels = [axis_label(m, mode) for m, mode in p.objectives]

    def dims(rows):
        return [dict(label=lab, values=rows[m]) for lab, (m, _) in zip(labels, p.objectives)]

    common = dict(diagonal=dict(visible=False), showupperhalf=False, hovertemplate="%{text}<extra></extra>")
    if len(o):
        marker = _rank_marker(p, o, size=8, colorbar_len=0.5)
        fig.add_trace(
            go.Splom(
                dimensions=dims(o), name="other ranks", text=_hover(p, o), **common, marker=dict(marker, showscale=True)
            )
        )
    if len(p.overlapping):
        v = _finished_first(p.overlapping)
        fig.add_trace(
            go.Splom(
                dimensions=dims(v), name=OVERLAP_NAME, text=_hover(p, v), **common, marker=_overlap_marker(v, size=9)
            )
        )
    if len(u):
        fig.add_trace(
            go.Splom(
                dimensions=dims(u),
                name="unranked (running, failed, …)",
                text=_hover(p, u),
                **common,
                marker=_unranked_marker(u, size=8),
            )
        )
    fig.add_trace(
        go.Splom(dimensions=dims(f), name="front (rank 1)", text=_hover(p, f), **common, marker=_front_marker(f, 12))
    )
    if p.any_stopped:  # a legend key on the matrix's axes, drawn nowhere
        fig.add_trace(
            go.Splom(
                dimensions=[dict(label=lab, values=[None]) for lab in labels],
                name="stopped early (ASHA)",
                **common,
                marker=dict(size=10, color="#555555", symbol=STOPPED_SYMBOL[0]),
            )
        )
    fig.update_layout(dragmode="select", hovermode="closest", showlegend=True)
