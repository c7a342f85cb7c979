"""The study's comparison, recomputed from MLflow alone: Pareto ranks over its objectives, a table
of all trials, the front's pictures and parameter importance.

    python -m dashboards.pareto quickstart                         # the default store, studies/mlflow.db
    python -m dashboards.pareto farnet --tracking-uri http://127.0.0.1:5000
    python -m dashboards.pareto farnet --write                     # also rewrite what the driver logged

By default it only reads: it prints the parameter importance and the front. The study driver
(through dashboards.publish), and this command with --write, also tag every trial run
`pareto.front=true|false` and `pareto.rank` (1 = non-dominated), give it a description (its
objectives and costs, what its MLflow page shows first: dashboards.views.trial_note) and write
`pareto/trials.{csv,parquet}` (one row per run), `pareto/front.{html,png}`, `comparison/*` and
`importance/*` on the study's run (the driver after each trial ends, importance only at the end).

With `study.repeats` > 1 the runs that repeat a configuration (tag `config.id`) are compared as one
(dashboards.effects): ranks on the means, and each run tagged with its configuration's rank;
`comparison/configurations.{csv,parquet}` has one row per configuration (mean, .std, .ci_low,
.ci_high of each objective, repeats.n, repeats.failed), `comparison/recipes.{csv,md}` the effect of
each searched choice with its 95 % interval and verdict; the pictures draw configurations with
their intervals as error bars. The printed front shows mean ± CI (n), then the recipe table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from dashboards.effects import (
    choice_params,
    configurations_text,
    per_configuration,
    recipe_effects,
    recipes_markdown,
    recipes_text,
)
from dashboards.importance import importances, log_importance
from dashboards.ranking import describe_excluded
from dashboards.store import StudyInfo, StudyNotFound, check_reachable, trial_runs, trial_table
from dashboards.pareto_page import pareto_html
from dashboards.pareto_image import pareto_png
from dashboards.ui import default_tracking_uri, missing_store
from dashboards.views import NOTE_TAG, trial_note
from study.schema import TAG_CONFIG, TAG_FRONT, TAG_RANK


def compare(client, info: StudyInfo) -> pd.DataFrame:
    """The study's trials from MLflow, ranked (dashboards.store.trial_table; with repeats, each run
    carries its configuration's rank: ranked_by_configuration). Reads only."""
    return ranked_by_configuration(trial_table(info, trial_runs(client, info)), info)


def configurations(table: pd.DataFrame, info: StudyInfo) -> pd.DataFrame:
    """One row per configuration (dashboards.effects.per_configuration): means, 95 % intervals, n."""
    return per_configuration(table, info.objectives, list(info.space))


def recipes(table: pd.DataFrame, info: StudyInfo) -> pd.DataFrame:
    """The recipe table (dashboards.effects.recipe_effects) of every searched choice parameter."""
    return recipe_effects(table, info.objectives, list(info.space), choice_params(info.space))


def repeated(table: pd.DataFrame) -> bool:
    """Whether some configuration has more than one run (study.repeats > 1)."""
    return TAG_CONFIG in table and len(table) > 0 and bool(table[TAG_CONFIG].duplicated().any())


def ranked_by_configuration(table: pd.DataFrame, info: StudyInfo) -> pd.DataFrame:
    """With repeats, a run's pareto.rank / pareto.front are its configuration's, ranked on the
    means (a run that itself ended without values stays unranked); with one repeat each, the
    run's own rank is its configuration's already and the table is returned as it is."""
    if not repeated(table):
        return table
    configs = configurations(table, info).set_index(TAG_CONFIG)
    own = table[TAG_RANK].notna()
    rank = table[TAG_CONFIG].map(configs[TAG_RANK]).where(own)
    table = table.copy()
    table[TAG_RANK] = pd.array([pd.NA if pd.isna(r) else int(r) for r in rank], dtype="Int64")
    table[TAG_FRONT] = [None if pd.isna(r) else bool(r == 1) for r in rank]
    primary, mode = info.objectives[0]
    return table.sort_values(
        [TAG_RANK, primary, "trial"], ascending=[True, mode == "min", True], na_position="last", ignore_index=True
    )


def publish_study(client, info: StudyInfo, importance: bool = False) -> pd.DataFrame:
    """Rank the study's trials from MLflow, tag their runs, and (re)write the study run's
    comparison artefacts; with importance=True also the parameter importance. -> the table."""
    runs = trial_runs(client, info)
    table = ranked_by_configuration(trial_table(info, runs), info)
    configs = configurations(table, info)
    rows = {r["run_id"]: r for _, r in table.iterrows()}
    for run in runs:  # one batch per run whose tags change: a 100-trial study refreshes 100 times
        row = rows[run.info.run_id]
        rank = None if pd.isna(row[TAG_RANK]) else int(row[TAG_RANK])
        want = {
            TAG_FRONT: "true" if rank == 1 else "false",
            TAG_RANK: "unranked" if rank is None else str(rank),
            NOTE_TAG: trial_note(row, info.objectives, list(info.space), info.name),
        }  # the run page shows it first
        if any(run.data.tags.get(k) != v for k, v in want.items()):
            client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in want.items()])
    front = table[table[TAG_RANK] == 1]
    unranked = describe_excluded(table, info.objectives)
    client.log_batch(
        info.run_id,
        tags=[
            RunTag("pareto.front_trials", ", ".join(front["trial"].astype(str))[:5000]),
            RunTag("pareto.unranked", unranked or "none"),
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pareto"
        folder.mkdir()
        table.to_csv(folder / "trials.csv", index=False)
        _for_parquet(table).to_parquet(folder / "trials.parquet", index=False)
        title = f"study {info.name}"
        # the pictures show configurations: with one repeat each, exactly the trials
        (folder / "front.html").write_text(pareto_html(configs, info.objectives, list(info.space), title))
        pareto_png(configs, info.objectives, title, folder / "front.png", searched=list(info.space))
        client.log_artifacts(info.run_id, str(folder), "pareto")
        folder = Path(tmp) / "comparison"
        folder.mkdir()
        configs.to_csv(folder / "configurations.csv", index=False)
        _for_parquet(configs).to_parquet(folder / "configurations.parquet", index=False)
        effects = recipes(table, info)
        effects.to_csv(folder / "recipes.csv", index=False)
        (folder / "recipes.md").write_text(recipes_markdown(effects, info.objectives, title))
        client.log_artifacts(info.run_id, str(folder), "comparison")
        if importance:
            log_importance(client, info, table, Path(tmp) / "importance")
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


def front_text(table: pd.DataFrame, info: StudyInfo) -> str:
    """The front for the terminal: its configurations, each objective as mean ± half its 95 %
    interval (n), a line on what was left unranked, then the recipe table (dashboards.effects).
    table: the trial table (one row per run, as publish_study and compare return it)."""
    configs = configurations(table, info)
    front = configs[configs[TAG_RANK] == 1]
    ranked = int(configs[TAG_RANK].notna().sum())
    over = ", ".join(f"{m} ({mode})" for m, mode in info.objectives)
    if repeated(table):
        head = (
            f"study {info.name}: {len(table)} trials of {len(configs)} configurations, {ranked} configurations "
            f"ranked on their means, Pareto front of {len(front)} over {over}"
        )
    else:
        head = f"study {info.name}: {len(table)} trials, {ranked} ranked, Pareto front of {len(front)} over {over}"
    unranked = describe_excluded(configs, info.objectives)
    body = configurations_text(configs, info.objectives, list(info.space), front) if len(front) else "(empty front)"
    lines = [head, body] + ([unranked] if unranked else [])
    if choice_params(info.space):
        lines += ["", recipes_text(recipes(table, info), info.objectives)]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m dashboards.pareto") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="the study's name (study.name in its spec)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///studies/mlflow.db)",
    )
    p.add_argument(
        "--write",
        action="store_true",
        help="also re-tag the trial runs and rewrite the study run's pareto/ and importance/ "
        "artefacts (the study driver does this by itself; use it after editing runs)",
    )
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
    if not args.write:  # a query: read, compute, print; nothing is written to the store
        table = compare(client, info)
        values, how = importances(table, info)
        if values:
            ranked = sorted(values.items(), key=lambda kv: -kv[1])
            print(f"parameter importance ({how}): " + ", ".join(f"{p} {v:.2f}" for p, v in ranked))
        else:
            print(f"parameter importance: skipped ({how})")
        print(front_text(table, info))
        print(
            f"\n(read only: nothing was written to {uri}; --write re-tags the runs and rewrites the study "
            f"run's pareto/ and importance/)"
        )
        return 0
    table = publish_study(client, info, importance=True)
    print(front_text(table, info))
    done = (
        "pareto/ and importance/"
        if client.get_run(info.run_id).data.tags.get("importance.method", "").startswith("fANOVA")
        else "pareto/ (importance skipped, as said above)"
    )
    print(
        f"\nwrote {done} and the trial runs' pareto.* tags on run {info.run_id} (experiment "
        f"{info.experiment_id}) in {uri}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
