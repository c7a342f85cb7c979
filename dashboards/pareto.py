"""The study's comparison: Pareto ranks over its objectives, a table of all trials, plots and
parameter importance, recomputed from MLflow alone (it works after the cluster is gone).

    python -m dashboards.pareto quickstart                         # the default store, studies/mlflow.db
    python -m dashboards.pareto farnet --tracking-uri http://127.0.0.1:5000

It tags every trial run `pareto.front=true|false` and `pareto.rank` (1 = non-dominated), writes
`pareto/trials.{csv,parquet}`, `pareto/front.{html,png}` and `importance/*` on the study's run,
and prints the front. The study driver does the same after each trial ends (importance only at the end).

A trial is ranked when it ended (finished, or stopped early by ASHA with the values Optuna got)
and has a finite value for every objective; the others are listed, unranked, and counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

RANKED_STATUSES = ("finished", "stopped early")
TAG_FRONT, TAG_RANK = "pareto.front", "pareto.rank"


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
    eligible = table["status"].isin(RANKED_STATUSES).to_numpy() if len(table) else np.zeros(0, bool)
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
        if row["status"] not in RANKED_STATUSES:
            why = row["status"]
        else:
            missing = [m for m, _ in objectives if not _finite(row.get(m))]
            why = "missing " + ", ".join(missing) if missing else "not ranked"
        reasons[why] = reasons.get(why, 0) + 1
    return f"{len(unranked)} unranked: " + ", ".join(f"{n} {why}" for why, n in reasons.items())


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class StudyNotFound(LookupError):
    pass


@dataclass
class StudyInfo:
    """What the comparison needs to know of a study; from its Spec, or from its MLflow run alone."""

    name: str
    experiment_id: str
    run_id: str  # the study's (parent) run
    objectives: list[tuple[str, str]]  # (metric, "min"|"max"), the first is primary
    space: dict  # dotted path -> study.spec.Param, in sampling order

    @classmethod
    def from_spec(cls, spec, experiment_id: str, run_id: str) -> "StudyInfo":
        return cls(spec.study.name, experiment_id, run_id, [(o.metric, o.mode) for o in spec.study.objectives],
                   dict(spec.space))

    @classmethod
    def from_mlflow(cls, client, study: str) -> "StudyInfo":
        """Find the study's run by tag in any experiment and read the resolved spec logged on it."""
        from study.spec import Param
        from study.tracking import RESOLVED_ARTIFACT, TAG_ROLE, TAG_STUDY

        exps = [e.experiment_id for e in client.search_experiments()]
        runs = _search_all(client, exps, f"tags.`{TAG_ROLE}` = 'study' and tags.`{TAG_STUDY}` = '{study}'")
        if not runs:
            known = sorted({r.data.tags.get(TAG_STUDY) for r in _search_all(client, exps, f"tags.`{TAG_ROLE}` = 'study'")})
            raise StudyNotFound(f"no study {study!r} in {client.tracking_uri}; studies there: {known or 'none'}")
        if len(runs) > 1:
            raise StudyNotFound(f"{len(runs)} runs of study {study!r} in {client.tracking_uri} "
                              f"(experiments {sorted({r.info.experiment_id for r in runs})}); expected one")
        run = runs[0]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                saved = json.loads(Path(client.download_artifacts(run.info.run_id, RESOLVED_ARTIFACT, tmp)).read_text())
        except Exception as e:  # MLflow raises its own (and OSError) for a missing artefact
            raise StudyNotFound(f"study {study!r} (run {run.info.run_id}) has no {RESOLVED_ARTIFACT} artefact, which "
                                f"holds its objectives and space; it was started before studies recorded it ({e})")
        resolved = saved["resolved"]
        space = {path: Param(path, kind, args, d.get("when", {}))
                 for path, d in resolved["space"].items()
                 for kind, args in d.items() if kind != "when"}
        objectives = [(o["metric"], o["mode"]) for o in resolved["study"]["objectives"]]
        return cls(study, run.info.experiment_id, run.info.run_id, objectives, space)


def _search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _param(p, raw: str | None):
    """An MLflow param (a string) back to the value the sampler chose."""
    if raw is None:
        return None
    if p.kind == "choice":
        return next((v for v in p.args if str(v) == raw), raw)
    number = float(raw)
    return int(number) if p.kind == "int" or (p.kind == "quniform" and isinstance(p.args[0], int)) else number


def trial_runs(client, info: StudyInfo) -> list:
    from study.tracking import TAG_ROLE, TAG_STUDY

    return _search_all(client, [info.experiment_id], f"tags.`{TAG_ROLE}` = 'trial' and tags.`{TAG_STUDY}` = '{info.name}'")


def trial_table(info: StudyInfo, runs: list) -> pd.DataFrame:
    """One row per trial run (mlflow Run objects): trial, status, pareto.rank, pareto.front, the
    objectives, the searched params (None where a `when:` left one unsampled), then every final
    metric but the per-landmark series, and run_id. Ranked trials first, best rank and primary first."""
    from study.spec import active
    from study.tracking import TAG_STATUS, TAG_TRIAL

    rows = []
    for run in runs:
        tags = run.data.tags
        row = {"trial": tags.get(TAG_TRIAL), "run_id": run.info.run_id, "status": tags.get(TAG_STATUS, "running")}
        values: dict = {}
        for path, p in info.space.items():  # sampling order: a condition is decided before what it gates
            if active(p, values):
                values[path] = _param(p, run.data.params.get(path))
        row.update({path: values.get(path) for path in info.space})
        row.update({k: v for k, v in sorted(run.data.metrics.items())
                    if not k.startswith(("train/loss_lm_", "target/sigma_", "importance/"))})
        rows.append(row)
    columns = ["trial", "run_id", "status", *info.space, *[m for m, _ in info.objectives]]
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
    table = rank_table(table, info.objectives)
    first = list(dict.fromkeys(["trial", "status", TAG_RANK, TAG_FRONT, *[m for m, _ in info.objectives], *info.space]))
    table = table[first + [c for c in table.columns if c not in first and c != "run_id"] + ["run_id"]]
    primary, mode = info.objectives[0]
    return table.sort_values([TAG_RANK, primary, "trial"], ascending=[True, mode == "min", True],
                             na_position="last", ignore_index=True)


def refresh(client, info: StudyInfo, importance: bool = False) -> pd.DataFrame:
    """Rank the study's trials from MLflow, tag their runs, and (re)write the study run's
    comparison artefacts; with importance=True also the parameter importance. -> the table."""
    from mlflow.entities import RunTag

    from dashboards import plots

    runs = trial_runs(client, info)
    table = trial_table(info, runs)
    ranks = dict(zip(table["run_id"], table[TAG_RANK]))
    for run in runs:  # one batch per run whose tags change: a 100-trial study refreshes 100 times
        rank = ranks.get(run.info.run_id)
        rank = None if rank is None or pd.isna(rank) else int(rank)
        want = {TAG_FRONT: "true" if rank == 1 else "false", TAG_RANK: "unranked" if rank is None else str(rank)}
        if any(run.data.tags.get(k) != v for k, v in want.items()):
            client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in want.items()])
    front = table[table[TAG_RANK] == 1]
    unranked = describe_excluded(table, info.objectives)
    client.log_batch(info.run_id, tags=[
        RunTag("pareto.front_trials", ", ".join(front["trial"].astype(str))[:5000]),
        RunTag("pareto.unranked", unranked or "none"),
    ])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pareto"
        folder.mkdir()
        table.to_csv(folder / "trials.csv", index=False)
        _for_parquet(table).to_parquet(folder / "trials.parquet", index=False)
        title = f"study {info.name}"
        (folder / "front.html").write_text(plots.pareto_html(table, info.objectives, list(info.space), title))
        plots.pareto_png(table, info.objectives, title, folder / "front.png")
        client.log_artifacts(info.run_id, str(folder), "pareto")
        if importance:
            _log_importance(client, info, table, Path(tmp) / "importance")
    return table


def _for_parquet(table: pd.DataFrame) -> pd.DataFrame:
    """Parquet wants one type per column: a choice mixing types (1 and "a") is written as text."""
    out = table.copy()
    for c in out.columns:
        if out[c].dtype == object and c != TAG_FRONT:
            kinds = {type(v) for v in out[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1:
                out[c] = out[c].map(lambda v: None if v is None else str(v))
    return out


def importances(table: pd.DataFrame, info: StudyInfo) -> tuple[dict[str, float], str]:
    """fANOVA importance of each searched parameter for the primary objective, over the finished
    trials (ASHA-stopped ones are left out: their values are partial). Only parameters sampled
    in every finished trial are assessed. -> ({param: importance}, a line saying what was done)."""
    import optuna

    from study.space import distribution

    primary, mode = info.objectives[0]
    done = table[(table["status"] == "finished") & table[primary].map(_finite)] if primary in table else table[:0]
    if len(done) < 3:
        return {}, f"{len(done)} finished trial(s) with {primary}; importance needs at least 3"
    params = [p for p in info.space if done[p].notna().all() and done[p].nunique() > 1]
    if not params:
        return {}, "no searched parameter was sampled, with different values, in every finished trial"
    dists = {p: distribution(info.space[p]) for p in params}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for _, row in done.iterrows():
        study.add_trial(optuna.trial.create_trial(
            params={p: _native(row[p], dists[p]) for p in params}, distributions=dists, value=float(row[primary])))
    result = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params)
    return dict(result), f"fANOVA (Optuna) over {len(done)} finished trials, for {primary} ({mode})"


def _native(value, dist):
    import optuna

    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return next(c for c in dist.choices if c == value or str(c) == str(value))
    return int(value) if isinstance(dist, optuna.distributions.IntDistribution) else float(value)


def _log_importance(client, info: StudyInfo, table: pd.DataFrame, folder: Path) -> None:
    import time

    from mlflow.entities import Metric, RunTag

    from dashboards import plots

    values, how = importances(table, info)
    client.log_batch(info.run_id, tags=[RunTag("importance.method", how)])
    if not values:
        print(f"parameter importance: skipped ({how})", flush=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "importance.json").write_text(json.dumps({"objective": info.objectives[0][0], "method": how,
                                                        "importances": values}, indent=1))
    primary, mode = info.objectives[0]
    plots.importance_png(values, folder / "importance.png", f"{info.name}: what drives {primary} ({mode})", how)
    client.log_artifacts(info.run_id, str(folder), "importance")
    ranked = sorted(values.items(), key=lambda kv: -kv[1])
    print(f"parameter importance ({how}): " + ", ".join(f"{p} {v:.2f}" for p, v in ranked), flush=True)
    now, step = int(time.time() * 1000), int((table["status"] == "finished").sum())
    client.log_batch(info.run_id, metrics=[Metric(f"importance/{p}", float(v), now, step) for p, v in values.items()])


def front_text(table: pd.DataFrame, info: StudyInfo) -> str:
    """The front as a table for the terminal, with a line on what was left unranked."""
    cols = ["trial", "status", *[m for m, _ in info.objectives], *info.space]
    front = table[table[TAG_RANK] == 1][[c for c in cols if c in table]]
    ranked = int(table[TAG_RANK].notna().sum())
    head = f"study {info.name}: {len(table)} trials, {ranked} ranked, Pareto front of {len(front)} over " + \
        ", ".join(f"{m} ({mode})" for m, mode in info.objectives)
    unranked = describe_excluded(table, info.objectives)
    body = front.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-") if len(front) else "(empty front)"
    return "\n".join([head, body] + ([unranked] if unranked else []))


def main(argv: list[str] | None = None) -> int:
    from mlflow.tracking import MlflowClient

    from dashboards.ui import default_tracking_uri, missing_store
    from study.tracking import check_reachable

    p = argparse.ArgumentParser(prog="python -m dashboards.pareto", description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="the study's name (study.name in its spec)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///studies/mlflow.db)")
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no bar
    uri = args.tracking_uri or default_tracking_uri()
    if missing_store(uri):
        print(f"error: no MLflow store at {uri}; give --tracking-uri", file=sys.stderr)
        return 2
    try:
        check_reachable(uri)
        client = MlflowClient(uri)
        info = StudyInfo.from_mlflow(client, args.study)
    except (ConnectionError, StudyNotFound) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = refresh(client, info, importance=True)
    print(front_text(table, info))
    print(f"\nlogged pareto/ and importance/ on run {info.run_id} (experiment {info.experiment_id}) in {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
