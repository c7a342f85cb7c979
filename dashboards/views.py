"""What the MLflow UI (3.17) shows first for a study: a saved view of its trial runs, the link that
opens it, and each trial run's description.

    publish_study_view(client, experiment_id, "quickstart", [("val/mre_mm", "min")], ["optim.lr"])
    study_url("http://127.0.0.1:5000", experiment_id, "quickstart")
    # http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=study-quickstart
    trial_note(row, objectives, searched, "quickstart")    # markdown: the trial's objectives and cost first

What MLflow 3.17's UI reads (its JS bundle, mlflow/server/js/build/static/js):
- `?workflowType=machine_learning` picks the sidebar's "Model training" mode for this page (it
  overrides the mode kept in the browser, which starts as GenAI). The experiment tag
  `mlflow.experimentKind` no longer picks it: with the workflow switch on (3.17), the UI derives
  the kind from the mode. The tag is still set: it spares the "what kind of experiment?" prompt.
- `/#/experiments/<id>/runs` opens the Runs tab directly (`/#/experiments/<id>` redirects, and
  the redirect keeps only workflowType, workspace and time range: a view key would be dropped).
- `?viewStateShareKey=<key>` opens the saved view held in the experiment tag
  `mlflow.sharedViewState.<key>` (MLflow 3.15's saved views, the runs page's "Views" menu): a JSON
  envelope {name, createdAt, updatedAt, state}, state a JSON string of the search (searchFilter,
  orderByKey, orderByAsc, …) and the table (selectedColumns, columnOrder, …). It is ignored when
  the URL has a search parameter of its own (searchFilter, orderByKey, …).
- The filter keeps only the study's trial runs: a run whose parent run is not listed is a row of
  its own, so the trials are not folded under the study run.
- A run's overview page starts with its description, the tag `mlflow.note.content` (markdown).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import pandas as pd

from dashboards.plots import fmt, recipe
from study.schema import (
    ROLE_TRIAL,
    TAG_RANK,
    TAG_ROLE,
    TAG_STATUS,
    TAG_STUDY,
    tag_filter,
)

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # the UI's "Model training"
NOTE_TAG = "mlflow.note.content"
COST_COLUMNS = ("cost/gflops", "cost/epoch_s", "cost/params_m", "cost/latency_ms")  # the trainer's, cost/workers aside;
# the first two are the Pareto page's cost axes (dashboards.plots.COST_AXES)
WORKFLOW = "machine_learning"


def view_key(study: str) -> str:
    """The saved view's id: the tag `mlflow.sharedViewState.study-<name>`, `?viewStateShareKey=study-<name>`."""
    return f"study-{study}"


def column(kind: str, name: str) -> str:
    """The UI's key of a runs-table column, e.g. metrics.`val/mre_mm` (makeCanonicalSortKey)."""
    return f"{kind}.`{name}`"


def trials_view(study: str, objectives: Sequence[tuple[str, str]], searched: Sequence[str]) -> dict:
    """The saved view's state: the study's trial runs, best primary objective first, with the
    status, Pareto rank, objectives, costs and searched params as columns in that order."""
    metrics = list(dict.fromkeys([m for m, _ in objectives] + list(COST_COLUMNS)))
    columns = (
        [column("tags", TAG_STATUS), column("tags", TAG_RANK)]
        + [column("metrics", m) for m in metrics]
        + [column("params", p) for p in searched]
    )
    primary, mode = objectives[0]
    return {
        "searchFilter": tag_filter(**{TAG_ROLE: ROLE_TRIAL, TAG_STUDY: study}),
        "orderByKey": column("metrics", primary),
        "orderByAsc": mode == "min",
        "selectedColumns": columns,
        "columnOrder": columns,
        "runsHiddenMode": "SHOW_ALL",  # the charts compare every trial, not the first 10
    }


def view_tags(
    study: str, objectives: Sequence[tuple[str, str]], searched: Sequence[str], now_ms: int | None = None
) -> dict[str, str]:
    """The experiment tags that make study_url open the study's trials: {tag: value}."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    envelope = {
        "name": f"study {study}: trials",
        "createdAt": now_ms,
        "updatedAt": now_ms,
        "state": json.dumps(trials_view(study, objectives, searched)),
    }
    return {KIND_TAG: KIND, VIEW_TAG_PREFIX + view_key(study): json.dumps(envelope)}


def publish_study_view(
    client, experiment_id: str, study: str, objectives: Sequence[tuple[str, str]], searched: Sequence[str]
) -> None:
    """Tag the study's experiment (view_tags); a saved view already there keeps its creation time.
    An experiment whose kind a user already chose keeps it."""
    tags = client.get_experiment(experiment_id).tags
    wanted = view_tags(study, objectives, searched)
    key = VIEW_TAG_PREFIX + view_key(study)
    try:
        old = json.loads(tags.get(key, "{}"))
    except ValueError:
        old = {}
    if old.get("state") == json.loads(wanted[key])["state"]:
        del wanted[key]
    if tags.get(KIND_TAG):
        del wanted[KIND_TAG]
    for name, value in wanted.items():
        client.set_experiment_tag(experiment_id, name, value)


def saved_studies(client) -> list[tuple[str, str]]:
    """(experiment id, study) of every study view (publish_study_view) in the store, in experiment order."""
    prefix = VIEW_TAG_PREFIX + view_key("")
    return [
        (e.experiment_id, tag.removeprefix(prefix))
        for e in client.search_experiments()
        for tag in sorted(e.tags)
        if tag.startswith(prefix)
    ]


def study_url(base: str, experiment_id: str, study: str) -> str:
    """The link that opens the study's trial runs in the UI at `base` (http://host:port)."""
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType={WORKFLOW}"
        f"&viewStateShareKey={view_key(study)}"
    )


def trial_note(row, objectives: Sequence[tuple[str, str]], searched: Sequence[str], study: str) -> str:
    """A trial run's description (markdown), which its overview page shows first (clipped to about
    three lines until "Show more"): the objectives' final values, then the costs, then its recipe,
    status and rank. row: a row of dashboards.store.trial_table (every final metric is a column).

        **val/mre_mm 1.6** (min) · **val/sdr_2mm 71** (max)

        cost/gflops 4.2 · cost/epoch_s 42 · cost/params_m 2.1 · cost/latency_ms 12.6

        adaloss, lr 3e-4 · finished · Pareto rank 1 (on the front) in study `quickstart`
    """
    names = [m for m, _ in objectives]
    first = " · ".join(f"**{m} {fmt(row.get(m))}** ({mode})" for m, mode in objectives)
    costs = " · ".join(f"{c} {fmt(row.get(c))}" for c in COST_COLUMNS if c not in names and c in row)
    rank = row.get(TAG_RANK)
    where = "unranked" if pd.isna(rank) else f"Pareto rank {int(rank)}" + (" (on the front)" if int(rank) == 1 else "")
    last = " · ".join(x for x in (recipe(row, searched), fmt(row.get("status")), f"{where} in study `{study}`") if x)
    return "\n\n".join(x for x in (first, costs, last) if x) + "\n"
