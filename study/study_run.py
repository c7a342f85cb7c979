"""The study's own MLflow run, on the driver: where the tracking store is, the experiment and the
parent run that a study opens (or finds again on --resume), records its spec and environment on,
and closes with its summary. The trials' child runs are study.tracking's.

    uri = resolve_tracking_uri(None, spec)            # sqlite:///…/studies/mlflow.db by default
    study_run = open_study_run(uri, spec)              # (experiment id, parent run id)
    close_study_run(uri, study_run, {"best/val/mre_mm": 2.1})
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from dashboards.publish import publish_study_view
from study.schema import RESOLVED_ARTIFACT, ROLE_STUDY, TAG_COMMIT, TAG_ROLE, TAG_STUDY, tag_filter
from study.spec import Spec
from study.versions import PACKAGES, package_versions


def resolve_tracking_uri(cli_uri: str | None, spec: Spec) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite file in the study storage."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    spec.storage_path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{spec.storage_path / 'mlflow.db'}"


def prepare_store(uri: str) -> None:
    """Open the tracking store once (a new SQLite store runs its schema migrations: seconds), so that
    it is ready when the study run is opened; run_study does this while Ray starts."""
    MlflowClient(uri).search_experiments(max_results=1)


def _sqlite_folder(uri: str) -> Path:
    """The folder of a `sqlite:///path` store's file (relative paths from the working directory)."""
    return Path(uri.split(":///", 1)[-1].split("?", 1)[0]).expanduser().resolve().parent


@dataclass
class StudyRun:
    """The study's MLflow experiment and its parent run, which every trial run is a child of."""

    experiment_id: str
    run_id: str


def experiment_name(spec: Spec) -> str:
    return spec.study.experiment or spec.study.name


def open_study_run(uri: str, spec: Spec) -> StudyRun:
    """Find or create the study's experiment and parent run, and record on a new one the spec,
    the resolved spec, the git commit and the package versions; tag the experiment with the
    study's saved view of its trials (dashboards.views), which the printed UI link opens."""
    client = MlflowClient(uri)
    name = experiment_name(spec)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        artifacts = None
        if uri.startswith("sqlite:"):
            # Keep artefacts beside the SQLite file rather than in whatever folder we were started from:
            # in the study storage when it is a folder, else (an object store) in the database's folder.
            home = spec.storage_path if "://" not in spec.location else _sqlite_folder(uri)
            artifacts = (home / "mlartifacts" / name).as_uri()
        exp_id = client.create_experiment(name, artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
    found = client.search_runs([exp_id], filter_string=tag_filter(**{TAG_ROLE: ROLE_STUDY, TAG_STUDY: spec.study.name}))
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        env = environment()
        tags = {
            TAG_STUDY: spec.study.name,
            TAG_ROLE: ROLE_STUDY,
            "mlflow.source.name": "study.run",
            **{f"version.{k}": v for k, v in env["packages"].items() if k in PACKAGES[:5]},
        }
        if env["git"].get("commit"):
            tags |= {TAG_COMMIT: env["git"]["commit"], "git.dirty": str(env["git"]["dirty"]).lower()}
        run = client.create_run(exp_id, run_name=spec.study.name, tags=tags)
        run_id = run.info.run_id
        client.log_batch(
            run_id,
            params=[
                Param("study.objectives", ", ".join(f"{o.metric} ({o.mode})" for o in spec.study.objectives)),
                Param("study.sampler", spec.study.sampler),
                Param("study.scheduler", spec.study.scheduler.type),
                Param("study.trials", str(spec.study.trials)),
                Param("study.repeats", str(spec.study.repeats)),
                Param("study.space", "; ".join(f"{p.path} ~ {p.describe()}" for p in spec.space.values())[:6000]),
            ],
        )
        client.log_text(run_id, spec.text, "spec.yaml")
        client.log_dict(run_id, {"source": spec.source, "resolved": spec.resolved()}, RESOLVED_ARTIFACT)
        client.log_dict(run_id, env, "environment.json")
    publish_study_view(
        client,
        exp_id,
        spec.study.name,  # what the UI link opens: the trials, objectives, costs
        [(o.metric, o.mode) for o in spec.study.objectives],
        list(spec.space),
    )
    return StudyRun(exp_id, run_id)


def environment() -> dict:
    """Python, platform, package versions and the git commit of this checkout (if it is one)."""
    packages = package_versions()
    git: dict = {}
    root = Path(__file__).resolve().parent.parent

    def run(*a):
        return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode == 0:
            git = {"commit": head.stdout.strip(), "dirty": bool(run("status", "--porcelain").stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        pass  # no git here (an installed wheel): the versions still say what ran
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": packages, "git": git}


def close_study_run(uri: str, study_run: StudyRun, summary: dict[str, float], status: str = "FINISHED") -> None:
    """Log the study's summary metrics (the finite ones) on its parent run and end it with `status`."""
    client = MlflowClient(uri)
    metrics = [Metric(k, float(v), int(time.time() * 1000), 0) for k, v in summary.items() if math.isfinite(v)]
    if metrics:
        client.log_batch(study_run.run_id, metrics=metrics)
    client.set_terminated(study_run.run_id, status)
