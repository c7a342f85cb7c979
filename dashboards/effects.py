"""Configurations and recipe effects with their uncertainty: a study's trial runs grouped into the
configurations they repeat (`config.id`), each objective's mean with a 95 % confidence interval,
and for each searched `choice` parameter whether one value beats the others beyond seed noise.

    trials = trial_table(info, trial_runs(client, info))          # one row per run (dashboards.store)
    configs = per_configuration(trials, info.objectives, list(info.space))
    configs[["config.id", "val/mre_mm", "val/mre_mm.ci_low", "val/mre_mm.ci_high", "repeats.n"]]
    recipes = recipe_effects(trials, info.objectives, list(info.space), choice_params(info.space))
    print(recipes_text(recipes))

Per configuration (one row each), for every objective metric m: `m` (the mean over the repeats that
ended with values: finished or stopped early), `m.std` (sample standard deviation, ddof 1), and
`m.ci_low` / `m.ci_high`, the 95 % t interval of the mean, m ± t_{0.975, n-1} · std / √n (NaN with
n < 2); `repeats.n` (repeats with values), `repeats.failed` (failed or diverged repeats: counted,
never averaged), `trials` (the repeats' Tune trial ids). Pareto ranks (dashboards.ranking) are
computed on the means. A store without `config.id` tags (a study from before repeats) gives one
configuration per run, named by its trial id; with one repeat everything equals the trial table.

Recipe effects (one row per value of each choice parameter): the best configuration with that value
(by its mean of the primary objective, the first; a tie goes to the larger n, then the smaller
config.id), its mean, 95 % interval and n, and the difference `diff` = this value's best minus the
best configuration of any other value (in the metric's units) with a 95 % interval:
- paired t, where the two configurations are a matched pair: the same value of every other searched
  parameter and repeats with the same seeds (the same `config.repeat`, so train.seed = base + repeat).
  The differences d_i of seed-matched repeats give mean(d) ± t_{0.975, k-1} · sd(d) / √k (k pairs ≥ 2);
- otherwise Welch's t: (m_a − m_b) ± t_{0.975, ν} · se, se = √(s_a²/n_a + s_b²/n_b), ν the
  Welch–Satterthwaite degrees of freedom, se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1)).
  Two configurations without spread (se = 0) get the point interval [diff, diff].
The verdict is `better` or `worse` when the interval lies wholly on one side of 0 (better = lower
for a `min` objective), else `no clear difference at n = K` (K the repeats per side, `3 vs 2` when
they differ, pairs for the paired test); with n = 1 on either side there is no interval:
`unclear (n = 1)`. A value none of whose configurations ended with values is listed with
`no finished configuration`, and a parameter with one value left gets `no other value`. Values
where a `when:` left the parameter inactive are not compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from dashboards.ranking import rank_table
from study.schema import RANKED, TAG_CONFIG, TAG_FRONT, TAG_RANK, TAG_REPEAT, Status

LEVEL = 0.95  # every interval here is a 95 % interval
N, FAILED = "repeats.n", "repeats.failed"
NOT_AVERAGED = (Status.FAILED.value, Status.DIVERGED.value)  # counted in repeats.failed
# With no repeat that has values, a configuration's status is the first of these its repeats have.
_WAITING = (Status.RUNNING.value, Status.INTERRUPTED.value, Status.DIVERGED.value, Status.FAILED.value)


def t_quantile(df: float) -> float:
    """t_{0.975, df}: the two-sided 95 % quantile of Student's t (NaN for df ≤ 0 or NaN)."""
    return float(stats.t.ppf(0.5 + LEVEL / 2, df)) if df > 0 else math.nan


def mean_ci(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) of a sample: std with ddof 1, the 95 % t interval of the mean;
    std and the interval are NaN with fewer than 2 values, everything NaN with none."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return (math.nan,) * 4
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(v.std(ddof=1))
    half = t_quantile(len(v) - 1) * sd / math.sqrt(len(v))
    return mean, sd, mean - half, mean + half


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(mean(a) - mean(b), ci_low, ci_high): Welch's 95 % t interval (NaN when n < 2 on a side)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:  # no spread on either side: the difference is what it is
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(dof) * se
    return diff, diff - half, diff + half


def paired(d: Sequence[float]) -> tuple[float, float, float]:
    """(mean(d), ci_low, ci_high) of matched differences d: the paired 95 % t interval."""
    mean, sd, lo, hi = mean_ci(d)
    if len(d) >= 2 and sd == 0:
        lo = hi = mean
    return mean, lo, hi


def _config_ids(trials: pd.DataFrame) -> pd.Series:
    """Each run's configuration: its config.id tag, else (a study from before repeats) its trial id."""
    own = trials["trial"].astype(str)
    if TAG_CONFIG not in trials:
        return own
    return (
        trials[TAG_CONFIG].where(trials[TAG_CONFIG].notna() & (trials[TAG_CONFIG].astype(str) != ""), own).astype(str)
    )


def _valued(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The repeats that ended with values (finished / stopped early) and have every objective finite."""
    ok = rows["status"].isin([s.value for s in RANKED])
    for m in metrics:
        ok &= np.isfinite(pd.to_numeric(rows[m], errors="coerce").astype(float)) if m in rows else False
    return rows[ok]


def _status(rows: pd.DataFrame, valued: pd.DataFrame) -> str:
    if len(valued):  # stopped early only when ASHA stopped every repeat that counts
        return (
            Status.STOPPED_EARLY.value
            if (valued["status"] == Status.STOPPED_EARLY.value).all()
            else Status.FINISHED.value
        )
    have = set(rows["status"].astype(str))
    return next((s for s in _WAITING if s in have), str(rows["status"].iloc[0]))


def per_configuration(trials: pd.DataFrame, objectives: list[tuple[str, str]], searched: Sequence[str]) -> pd.DataFrame:
    """trials: one row per run (dashboards.store.trial_table: `trial`, `status`, optionally
    `config.id` / `config.repeat`, the searched params, the objectives and other final metrics).
    -> one row per configuration: config.id, trial (= config.id: what the Pareto page labels),
    status, pareto.rank / pareto.front (on the means), per objective m: m, m.std, m.ci_low,
    m.ci_high; repeats.n, repeats.failed, the searched params, the mean of every other numeric
    metric (`cost/gflops`, …), trials. Ranked first, best rank and primary mean first."""
    metrics = [m for m, _ in objectives]
    searched = [p for p in searched if p in trials.columns]
    stat_cols = [c for m in metrics for c in (m, f"{m}.std", f"{m}.ci_low", f"{m}.ci_high")]
    if not len(trials):
        empty = pd.DataFrame(columns=[TAG_CONFIG, "trial", "status", *stat_cols, N, FAILED, *searched, "trials"])
        return rank_table(empty, objectives)
    ids = _config_ids(trials)
    skip = {"trial", "run_id", "status", TAG_CONFIG, TAG_REPEAT, TAG_RANK, TAG_FRONT, *metrics, *searched}
    others = [c for c in trials.columns if c not in skip and "/" in c and pd.api.types.is_numeric_dtype(trials[c])]
    rows = []
    for cid in dict.fromkeys(ids):  # first-seen order
        runs = trials[ids == cid]
        if TAG_REPEAT in runs:
            runs = runs.sort_values(TAG_REPEAT, kind="stable")
        valued = _valued(runs, metrics)
        row = {TAG_CONFIG: cid, "trial": cid, "status": _status(runs, valued)}
        ended = runs[runs["status"].isin([s.value for s in RANKED])]
        for m in metrics:  # over the repeats that ended with values; with none, what the runs reached (unranked)
            got = pd.to_numeric((ended if len(ended) else runs)[m], errors="coerce").astype(float) if m in runs else []
            values = got[np.isfinite(got)] if len(got) else []
            row.update(zip((m, f"{m}.std", f"{m}.ci_low", f"{m}.ci_high"), mean_ci(values)))
        row[N] = len(valued)
        row[FAILED] = int(runs["status"].isin(NOT_AVERAGED).sum())
        row.update({p: runs[p].iloc[0] for p in searched})  # the same in every repeat
        for c in others:  # costs: the mean of what the repeats measured
            v = pd.to_numeric((valued if len(valued) else runs)[c], errors="coerce").astype(float)
            row[c] = float(v.mean()) if v.notna().any() else math.nan
        row["trials"] = ", ".join(runs["trial"].astype(str))
        rows.append(row)
    table = rank_table(pd.DataFrame(rows), objectives)
    first = [TAG_CONFIG, "trial", "status", TAG_RANK, TAG_FRONT, *stat_cols, N, FAILED, *searched]
    table = table[first + [c for c in table.columns if c not in first]]
    primary, mode = objectives[0]
    return table.sort_values(
        [TAG_RANK, primary, TAG_CONFIG], ascending=[True, mode == "min", True], na_position="last", ignore_index=True
    )


def overlaps_front(configs: pd.DataFrame, objectives: list[tuple[str, str]]) -> pd.Series:
    """Per configuration (bool): ranked but not on the front, and no front configuration beats it
    beyond the 95 % intervals, i.e. none whose interval's worse end is at least as good as this
    one's better end in every objective, and better in one (a configuration without an interval
    counts as its mean). With one objective: its interval overlaps the best one's."""
    metrics = [m for m, _ in objectives]
    signs = np.array([1.0 if mode == "min" else -1.0 for _, mode in objectives])
    rank = pd.to_numeric(configs[TAG_RANK], errors="coerce").astype(float) if len(configs) else pd.Series(dtype=float)
    front, rest = (rank == 1).to_numpy(), (rank > 1).to_numpy()
    out = np.zeros(len(configs), dtype=bool)
    if not front.any() or not rest.any() or any(f"{m}.ci_low" not in configs for m in metrics):
        return pd.Series(out, index=configs.index)

    def ends(rows):  # (better end, worse end) per row and objective, everything minimised
        mean = np.stack([rows[m].astype(float).to_numpy() for m in metrics], 1)
        lo = np.stack(
            [pd.to_numeric(rows[f"{m}.ci_low"], errors="coerce").astype(float).to_numpy() for m in metrics], 1
        )
        hi = np.stack(
            [pd.to_numeric(rows[f"{m}.ci_high"], errors="coerce").astype(float).to_numpy() for m in metrics], 1
        )
        lo, hi = np.where(np.isnan(lo), mean, lo) * signs, np.where(np.isnan(hi), mean, hi) * signs
        return np.minimum(lo, hi), np.maximum(lo, hi)

    _, f_worse = ends(configs[front])
    c_better, _ = ends(configs[rest])
    # beaten[i, j]: front configuration j beats configuration i beyond both intervals
    beaten = ((f_worse[None] <= c_better[:, None]).all(-1) & (f_worse[None] < c_better[:, None]).any(-1)).any(-1)
    out[np.flatnonzero(rest)] = ~beaten
    return pd.Series(out, index=configs.index)


def choice_params(space: dict) -> list[str]:
    """The searched `choice` parameters of a space (dotted path -> study.space.Param), in order."""
    return [path for path, p in space.items() if getattr(p, "kind", None) == "choice"]


def _same(a, b) -> bool:
    """Param values equal, None / NaN (inactive) equal to each other."""
    missing = [x is None or (isinstance(x, float) and math.isnan(x)) for x in (a, b)]
    return all(missing) or (not any(missing) and a == b)


def _n_text(na: int, nb: int, pairs: bool) -> str:
    if pairs:
        return f"{na} pairs"
    return str(na) if na == nb else f"{na} vs {nb}"


def recipe_effects(
    trials: pd.DataFrame, objectives: list[tuple[str, str]], searched: Sequence[str], choices: Sequence[str]
) -> pd.DataFrame:
    """The recipe table (see the module docstring): one row per value of each choice parameter in
    `choices`, judged on the primary objective (objectives[0]). Columns: param, value, config.id
    (its best configuration), m, m.ci_low, m.ci_high, repeats.n, repeats.failed (of that
    configuration), configurations (with this value, failed ones too), vs (the best other value),
    vs.config.id, diff, diff.ci_low, diff.ci_high, method (`paired t` | `Welch t` | ``), verdict."""
    metric, mode = objectives[0]
    configs = per_configuration(trials, objectives, searched)
    metrics = [m for m, _ in objectives]
    ids = _config_ids(trials) if len(trials) else pd.Series(dtype=str)
    repeats = {}  # config.id -> {repeat index: primary value} of its repeats with values
    for cid in configs[TAG_CONFIG]:
        runs = _valued(trials[ids == cid], metrics)
        keys = runs[TAG_REPEAT] if TAG_REPEAT in runs else pd.Series(range(len(runs)), index=runs.index)
        repeats[cid] = {
            (int(k) if pd.notna(k) else -1 - i): float(v)
            for i, (k, v) in enumerate(zip(keys, runs[metric].astype(float)))
        }
    sign = 1.0 if mode == "min" else -1.0
    ranked = configs[configs[N] > 0].copy()
    ranked["_key"] = sign * ranked[metric].astype(float)
    ranked = ranked.sort_values(["_key", N, TAG_CONFIG], ascending=[True, False, True], kind="stable")
    cols = [
        "param",
        "value",
        TAG_CONFIG,
        metric,
        f"{metric}.ci_low",
        f"{metric}.ci_high",
        N,
        FAILED,
        "configurations",
        "vs",
        "vs.config.id",
        "diff",
        "diff.ci_low",
        "diff.ci_high",
        "method",
        "verdict",
    ]
    out = []
    for param in choices:
        if param not in configs:
            continue
        values = [v for v in dict.fromkeys(configs[param]) if not _same(v, None)]
        best = {}
        for v in values:
            with_v = ranked[[_same(x, v) for x in ranked[param]]]
            best[v] = with_v.iloc[0] if len(with_v) else None
        order = sorted(values, key=lambda v: (best[v] is None, best[v]["_key"] if best[v] is not None else 0))
        for v in order:
            a = best[v]
            row = dict.fromkeys(cols)
            row.update(param=param, value=v, configurations=int(sum(_same(x, v) for x in configs[param])), method="")
            if a is None:
                row.update(
                    verdict="no finished configuration",
                    **{N: 0, FAILED: int(configs.loc[[_same(x, v) for x in configs[param]], FAILED].sum())},
                )
                out.append(row)
                continue
            row.update(
                {
                    TAG_CONFIG: a[TAG_CONFIG],
                    metric: a[metric],
                    f"{metric}.ci_low": a[f"{metric}.ci_low"],
                    f"{metric}.ci_high": a[f"{metric}.ci_high"],
                    N: int(a[N]),
                    FAILED: int(a[FAILED]),
                }
            )
            rivals = [(w, best[w]) for w in order if not _same(w, v) and best[w] is not None]
            if not rivals:
                row["verdict"] = "no other value"
                out.append(row)
                continue
            w, b = rivals[0]
            row.update({"vs": w, "vs.config.id": b[TAG_CONFIG]})
            ra, rb = repeats[a[TAG_CONFIG]], repeats[b[TAG_CONFIG]]
            matched = sorted(k for k in ra if k in rb and k >= 0)
            others_equal = all(_same(a[p], b[p]) for p in searched if p != param and p in configs)
            if others_equal and len(matched) >= 2:
                diff, lo, hi = paired([ra[k] - rb[k] for k in matched])
                row["method"], n_text = "paired t", _n_text(len(matched), len(matched), True)
            else:
                diff, lo, hi = welch(list(ra.values()), list(rb.values()))
                row["method"], n_text = ("Welch t" if not math.isnan(lo) else ""), _n_text(len(ra), len(rb), False)
            row.update({"diff": diff, "diff.ci_low": lo, "diff.ci_high": hi})
            if math.isnan(lo):
                row["verdict"] = "unclear (n = 1)"
            elif max(sign * lo, sign * hi) < 0:  # wholly on the better side of 0 (lower for min)
                row["verdict"] = "better"
            elif min(sign * lo, sign * hi) > 0:
                row["verdict"] = "worse"
            else:
                row["verdict"] = f"no clear difference at n = {n_text}"
            out.append(row)
    return pd.DataFrame(out, columns=cols)


def _num(v, digits: int = 4) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(f) else f"{f:.{digits}g}"


def interval_text(mean, low, high, n) -> str:
    """'4.07 ± 0.12 (n = 3)'; '12.1 (n = 1)' without an interval; '-' without a mean."""
    if _num(mean) == "-":
        return "-"
    half = (float(high) - float(low)) / 2 if _num(low) != "-" else math.nan
    spread = f" ± {_num(half, 2)}" if not math.isnan(half) else ""
    return f"{_num(mean)}{spread} (n = {int(n)})"


def configurations_text(
    configs: pd.DataFrame, objectives: list[tuple[str, str]], searched: Sequence[str], rows: pd.DataFrame | None = None
) -> str:
    """Configurations (all, or `rows` of them) as a terminal table: config.id, status, pareto.rank,
    each objective as mean ± half the 95 % interval (n), failed repeats, the searched params."""
    rows = configs if rows is None else rows
    out = pd.DataFrame(
        {
            TAG_CONFIG: rows[TAG_CONFIG],
            "status": rows["status"],
            TAG_RANK: rows[TAG_RANK].astype(object).where(rows[TAG_RANK].notna(), "-"),
        }
    )
    for m, _ in objectives:
        out[f"{m} (95% CI)"] = [
            interval_text(r[m], r[f"{m}.ci_low"], r[f"{m}.ci_high"], r[N]) for _, r in rows.iterrows()
        ]
    if configs["trials"].astype(str).str.contains(",").any():  # with repeats: one trial's status says it all
        out[FAILED] = rows[FAILED]
    for p in searched:
        if p in rows:
            out[p] = rows[p].map(lambda v: _num(v) if isinstance(v, float) else ("-" if v is None else str(v)))
    return out.to_string(index=False) if len(out) else "(no configurations)"


def recipes_text(recipes: pd.DataFrame, objectives: list[tuple[str, str]]) -> str:
    """The recipe table for the terminal (and recipes.md): one line per param value."""
    metric, mode = objectives[0]
    if not len(recipes):
        return "recipe effects: no choice parameter was searched"
    view = pd.DataFrame(
        {
            "param": recipes["param"],
            "value": recipes["value"].astype(str),
            "best config": recipes[TAG_CONFIG].fillna("-"),
            f"{metric} (95% CI)": [
                interval_text(r[metric], r[f"{metric}.ci_low"], r[f"{metric}.ci_high"], r[N])
                for _, r in recipes.iterrows()
            ],
            "vs": recipes["vs"].map(_cell),
            "diff (95% CI)": [_diff_text(r) for _, r in recipes.iterrows()],
            "method": recipes["method"].replace("", "-"),
            "verdict": recipes["verdict"],
        }
    )
    head = f"recipe effects on {metric} ({mode}; diff = this value's best minus the best other value's):"
    return head + "\n" + view.to_string(index=False)


def _cell(v) -> str:
    """A param value for a table: '-' where there is none."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _diff_text(r) -> str:
    if _num(r["diff"]) == "-":
        return "-"
    if _num(r["diff.ci_low"]) == "-":
        return f"{float(r['diff']):+.4g}"
    return f"{float(r['diff']):+.4g} [{float(r['diff.ci_low']):+.4g}, {float(r['diff.ci_high']):+.4g}]"


def recipes_markdown(recipes: pd.DataFrame, objectives: list[tuple[str, str]], title: str) -> str:
    """recipes.md on the study run: the recipe table as a Markdown table, with the method."""
    metric, mode = objectives[0]
    lines = [
        f"# {title}: recipe effects on {metric} ({mode})",
        "",
        "Per value of each searched choice: its best configuration (mean ± half the 95 % t interval, n) and "
        "diff = that mean minus the best other value's, with a 95 % interval (paired t on seed-matched repeats "
        "where the two configurations differ only in this parameter, else Welch's t).",
        "",
        f"| param | value | best config | {metric} | vs | diff [95% CI] | method | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in recipes.iterrows():
        cells = [
            r["param"],
            r["value"],
            _cell(r[TAG_CONFIG]),
            interval_text(r[metric], r[f"{metric}.ci_low"], r[f"{metric}.ci_high"], r[N]),
            _cell(r["vs"]),
            _diff_text(r),
            r["method"] or "-",
            r["verdict"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
