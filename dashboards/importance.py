"""Which searched parameters drive the primary objective: fANOVA (Optuna's evaluator) over the
finished trials, written to the study run as importance/importance.{png,json} and metrics.

    values, how = importances(table, info)   # ({"optim.lr": 0.61, ...}, "fANOVA (Optuna) over 12 finished trials, ...")
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pandas as pd
from mlflow.entities import Metric, RunTag

from dashboards.ranking import finite
from dashboards.store import StudyInfo
from dashboards.study_plots import importance_png
from study.schema import Status
from study.search import distribution


def importances(table: pd.DataFrame, info: StudyInfo) -> tuple[dict[str, float], str]:
    """fANOVA importance of each searched parameter for the primary objective, over the finished
    trials (ASHA-stopped ones are left out: their values are partial). Only parameters sampled
    in every finished trial are assessed. -> ({param: importance}, a line saying what was done)."""
    primary, mode = info.objectives[0]
    done = table[(table["status"] == Status.FINISHED) & table[primary].map(finite)] if primary in table else table[:0]
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
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return next(c for c in dist.choices if c == value or str(c) == str(value))
    return int(value) if isinstance(dist, optuna.distributions.IntDistribution) else float(value)


def log_importance(client, info: StudyInfo, table: pd.DataFrame, folder: Path) -> str:
    """Compute, print and log the importance; -> the line saying what was done (or why not)."""
    values, how = importances(table, info)
    client.log_batch(info.run_id, tags=[RunTag("importance.method", how)])
    if not values:
        print(f"parameter importance: skipped ({how})", flush=True)
        return how
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "importance.json").write_text(json.dumps({"objective": info.objectives[0][0], "method": how,
                                                        "importances": values}, indent=1))
    primary, mode = info.objectives[0]
    importance_png(values, folder / "importance.png", f"{info.name}: what drives {primary} ({mode})", how)
    client.log_artifacts(info.run_id, str(folder), "importance")
    ranked = sorted(values.items(), key=lambda kv: -kv[1])
    print(f"parameter importance ({how}): " + ", ".join(f"{p} {v:.2f}" for p, v in ranked), flush=True)
    now, step = int(time.time() * 1000), int((table["status"] == Status.FINISHED).sum())
    client.log_batch(info.run_id, metrics=[Metric(f"importance/{p}", float(v), now, step) for p, v in values.items()])
    return how
