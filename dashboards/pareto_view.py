"""The Pareto comparison as data, which the plotly page (pareto_page.py) and the PNG (pareto_image.py)
both draw: the trials of a study table that can be placed, split into the front, the other ranks,
those that overlap the front and the unranked, with their labels and the subtitle.

    view = ParetoView(table, [("val/mre_mm", "min"), ("cost/gflops", "min")], searched=["optim.lr"])
    view.front, view.others, view.unranked, view.subtitle   # "12 trials ranked, front of 3"

table: one row per trial (or per configuration, dashboards.effects.per_configuration) with `trial`,
`status`, `pareto.rank` (1 = the front, <NA> = unranked) and one column per objective metric.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dashboards.effects import overlaps_front
from dashboards.plots import COST_AXES, MAX_FRONT_LABELS, fmt, recipe
from dashboards.ranking import describe_excluded, pareto_ranks
from study.schema import Status


class ParetoView:
    """The trials of a study table that can be drawn: the ranked ones best first, and the unranked
    ones that have every objective; with one objective, the cost axis and its trade-off front.

    ranked, unranked: the table's rows, objectives as floats; front (pareto.rank 1), others (worse
    ranks, not overlapping the front), overlapping (configurations whose 95 % intervals overlap the
    front's; `overlap` is its mask over `ranked`); cost, cost_front: one objective's cost axis and the
    trials no cheaper trial beats; subtitle: what is drawn, in words; labels(rows): their recipes.
    """

    def __init__(self, table: pd.DataFrame, objectives: list[tuple[str, str]], searched: Sequence[str] = ()):
        for col in ("trial", "pareto.rank"):
            if col not in table.columns:
                raise ValueError(f"pareto table: no {col!r} column; have {list(table.columns)}")
        self.objectives = objectives
        self.metrics = [m for m, _ in objectives]
        self.searched = [s for s in searched if s in table.columns]
        values = pd.DataFrame(
            {m: pd.to_numeric(table[m], errors="coerce") if m in table else np.nan for m in self.metrics},
            index=table.index,
        )
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
        self.intervals = {
            m
            for m in self.metrics
            if f"{m}.ci_low" in table
            and np.isfinite(pd.to_numeric(table[f"{m}.ci_low"], errors="coerce").astype(float)).any()
        }
        self.repeated = "repeats.n" in table and bool((pd.to_numeric(table["repeats.n"], errors="coerce") > 1).any())
        overlap = (
            overlaps_front(self.ranked, objectives).to_numpy()
            if self.intervals
            else np.zeros(len(self.ranked), dtype=bool)
        )
        self.front = self.ranked[self.ranked["pareto.rank"] == 1]
        self.others = self.ranked[(self.ranked["pareto.rank"] > 1).to_numpy() & ~overlap]
        self.overlapping = self.ranked[overlap]  # not on the front, but not told apart from it either
        self.overlap = overlap
        self.max_rank = int(self.ranked["pareto.rank"].max()) if len(self.ranked) else 0
        if self.cost:  # the trials no cheaper-or-equal trial beats on the objective, cheapest first
            both = self.ranked[[m0, self.cost]].to_numpy(dtype=float)
            self.cost_front = self.ranked[pareto_ranks(both, [mode0, "min"]) == 1].sort_values(
                [self.cost, m0], ascending=[True, mode0 == "min"], kind="stable"
            )
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

    def value_text(self, r, m: str) -> str:
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


def rank_range(p: ParetoView) -> tuple[int, int]:
    """(lowest, highest) rank on the colour scale of the ranks behind the front."""
    return 2, max(3, p.max_rank)  # cmin < cmax even when only rank 2 exists


def front_order(front: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The front, better first along `metric`: the order its attainment staircase is drawn in."""
    return front.sort_values(metric, ascending=mode == "min", kind="stable")


def grouped_labels(xs, ys, labels: list[str]) -> tuple[list[float], list[float], list[str]]:
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
