"""Pareto ranks of a study's trials: non-dominated sorting over its objectives, on a plain table.

    table = rank_table(table, [("val/mre_mm", "min"), ("cost/gflops", "min")])
    table["pareto.rank"]      # 1 = the non-dominated front; NA = unranked (still running, failed, ...)
    describe_excluded(table, objectives)   # '2 unranked: 1 running, 1 missing val/mre_mm'

A trial is ranked when it ended with values Optuna was told (finished, or stopped early by ASHA)
and has a finite value for every objective.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from study.schema import RANKED, TAG_FRONT, TAG_RANK


def pareto_ranks(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Non-dominated sorting. values (N, M), modes M × "min"|"max" -> ranks (N,) int: 1 = the
    non-dominated front, 2 = the front once rank 1 is removed, …; 0 = unranked (a non-finite value).

    a dominates b when a is no worse in every objective and better in at least one: equal points
    do not dominate each other, so duplicates share a rank.
    """
    values = np.asarray(values, dtype=float).reshape(len(values), len(modes))
    signs = np.array([1.0 if m == "min" else -1.0 for m in modes])
    v = values * signs  # everything minimised
    ranks = np.zeros(len(v), dtype=int)
    ok = np.isfinite(v).all(axis=1)
    idx = np.flatnonzero(ok)
    pts = v[idx]
    # dominates[i, j]: point i dominates point j
    dominates = (pts[:, None, :] <= pts[None, :, :]).all(-1) & (pts[:, None, :] < pts[None, :, :]).any(-1)
    left = np.ones(len(idx), dtype=bool)
    rank = 0
    while left.any():
        rank += 1
        dominated = (dominates & left[:, None]).any(axis=0)
        front = left & ~dominated
        ranks[idx[front]] = rank
        left &= ~front
    return ranks


def rank_table(table: pd.DataFrame, objectives: list[tuple[str, str]]) -> pd.DataFrame:
    """Add `pareto.rank` (Int64, NA = unranked) and `pareto.front` (True/False, None = unranked)."""
    table = table.copy()
    metrics = [m for m, _ in objectives]
    for m in metrics:
        if m not in table:
            table[m] = np.nan
    values = table[metrics].astype(float).to_numpy(copy=True)
    eligible = table["status"].isin(RANKED).to_numpy() if len(table) else np.zeros(0, bool)
    values[~eligible] = np.nan
    ranks = pareto_ranks(values, [mode for _, mode in objectives]) if len(table) else np.zeros(0, int)
    table[TAG_RANK] = pd.array([r if r else pd.NA for r in ranks], dtype="Int64")
    table[TAG_FRONT] = [None if not r else bool(r == 1) for r in ranks]
    return table


def describe_excluded(table: pd.DataFrame, objectives: list[tuple[str, str]]) -> str:
    """'2 unranked: 1 running, 1 missing val/mre_mm' (empty when every trial is ranked)."""
    unranked = table[table[TAG_RANK].isna()]
    if unranked.empty:
        return ""
    reasons: dict[str, int] = {}
    for _, row in unranked.iterrows():
        if row["status"] not in RANKED:
            why = row["status"]
        else:
            missing = [m for m, _ in objectives if not finite(row.get(m))]
            why = "missing " + ", ".join(missing) if missing else "not ranked"
        reasons[why] = reasons.get(why, 0) + 1
    return f"{len(unranked)} unranked: " + ", ".join(f"{n} {why}" for why, n in reasons.items())


def finite(v) -> bool:
    """Whether v is a finite number (None, NA, text and NaN are not)."""
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
