"""A study read back from MLflow alone (it works after the cluster is gone): which study, its
objectives and space, and one table row per trial run.

    client = MlflowClient(uri)
    check_reachable(uri)                                  # a tracking server that does not answer: ConnectionError
    info = StudyInfo.from_mlflow(client, "quickstart")    # StudyNotFound if there is no such study
    table = trial_table(info, trial_runs(client, info))   # ranked (dashboards.ranking), best first
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dashboards.ranking import rank_table
from study.schema import (
    RESOLVED_ARTIFACT,
    ROLE_STUDY,
    ROLE_TRIAL,
    TAG_CONFIG,
    TAG_FRONT,
    TAG_RANK,
    TAG_REPEAT,
    TAG_ROLE,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL,
    Status,
    tag_filter,
)
from study.space import Param, active


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(uri.rstrip("/") + "/health")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is not None:  # MLflow's own variables for a server behind basic auth
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            if r.status == 200:
                return
            problem = f"HTTP {r.status}"
    except (urllib.error.URLError, OSError) as e:
        problem = str(getattr(e, "reason", e))
    raise ConnectionError(f"MLflow tracking server {uri} does not answer ({problem}); start it or fix --tracking-uri")


class StudyNotFound(LookupError):
    pass


@dataclass
class StudyInfo:
    """What the comparison needs to know of a study; from its Spec, or from its MLflow run alone."""

    name: str
    experiment_id: str
    run_id: str  # the study's (parent) run
    objectives: list[tuple[str, str]]  # (metric, "min"|"max"), the first is primary
    space: dict[str, Param]  # dotted path -> Param, in sampling order

    @classmethod
    def from_mlflow(cls, client, study: str) -> "StudyInfo":
        """Find the study's run by tag in any experiment and read the resolved spec logged on it."""
        exps = [e.experiment_id for e in client.search_experiments()]
        try:
            wanted = tag_filter(**{TAG_ROLE: ROLE_STUDY, TAG_STUDY: study})
        except ValueError as e:
            raise StudyNotFound(str(e)) from None
        runs = _search_all(client, exps, wanted)
        if not runs:
            known = sorted(
                {r.data.tags.get(TAG_STUDY) for r in _search_all(client, exps, tag_filter(**{TAG_ROLE: ROLE_STUDY}))}
            )
            raise StudyNotFound(f"no study {study!r} in {client.tracking_uri}; studies there: {known or 'none'}")
        if len(runs) > 1:
            raise StudyNotFound(
                f"{len(runs)} runs of study {study!r} in {client.tracking_uri} "
                f"(experiments {sorted({r.info.experiment_id for r in runs})}); expected one"
            )
        run = runs[0]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                saved = json.loads(Path(client.download_artifacts(run.info.run_id, RESOLVED_ARTIFACT, tmp)).read_text())
        except Exception as e:  # MLflow raises its own (and OSError) for a missing artefact
            raise StudyNotFound(
                f"study {study!r} (run {run.info.run_id}) has no {RESOLVED_ARTIFACT} artefact, which "
                f"holds its objectives and space; it was started before studies recorded it ({e})"
            )
        resolved = saved["resolved"]
        space = {
            path: Param(path, kind, args, d.get("when", {}))
            for path, d in resolved["space"].items()
            for kind, args in d.items()
            if kind != "when"
        }
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


def _repeat(raw: str | None) -> int:
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def trial_runs(client, info: StudyInfo) -> list:
    return _search_all(client, [info.experiment_id], tag_filter(**{TAG_ROLE: ROLE_TRIAL, TAG_STUDY: info.name}))


def trial_table(info: StudyInfo, runs: list) -> pd.DataFrame:
    """One row per trial run (mlflow Run objects): trial, status, pareto.rank, pareto.front, the
    objectives, the searched params (None where a `when:` left one unsampled), config.id and
    config.repeat (the configuration the run repeats, from its tags; without them the trial id and
    0), then every final metric but the per-landmark series, and run_id. Ranked trials first, best
    rank and primary first. The ranks here are the runs' own; dashboards.effects.per_configuration
    groups the runs into configurations and ranks those on their means."""
    rows = []
    for run in runs:
        tags = run.data.tags
        row = {
            "trial": tags.get(TAG_TRIAL),
            "run_id": run.info.run_id,
            "status": tags.get(TAG_STATUS, Status.RUNNING.value),
            # the configuration this run repeats (a study from before repeats: its own trial id, repeat 0)
            TAG_CONFIG: tags.get(TAG_CONFIG) or tags.get(TAG_TRIAL),
            TAG_REPEAT: _repeat(tags.get(TAG_REPEAT)),
        }
        values: dict = {}
        for path, p in info.space.items():  # sampling order: a condition is decided before what it gates
            if active(p, values):
                values[path] = _param(p, run.data.params.get(path))
        row.update({path: values.get(path) for path in info.space})
        row.update(
            {
                k: v
                for k, v in sorted(run.data.metrics.items())
                if not k.startswith(("train/loss_lm_", "target/sigma_", "importance/"))
            }
        )
        rows.append(row)
    columns = ["trial", "run_id", "status", TAG_CONFIG, TAG_REPEAT, *info.space, *[m for m, _ in info.objectives]]
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
    table = rank_table(table, info.objectives)
    first = list(
        dict.fromkeys(
            [
                "trial",
                "status",
                TAG_RANK,
                TAG_FRONT,
                *[m for m, _ in info.objectives],
                *info.space,
                TAG_CONFIG,
                TAG_REPEAT,
            ]
        )
    )
    table = table[first + [c for c in table.columns if c not in first and c != "run_id"] + ["run_id"]]
    primary, mode = info.objectives[0]
    return table.sort_values(
        [TAG_RANK, primary, "trial"], ascending=[True, mode == "min", True], na_position="last", ignore_index=True
    )
