"""The one door from the study driver into dashboards/: what the driver publishes to MLflow as a
study runs, and the few reading helpers it prints from.

    publish_study_view(client, experiment_id, "quickstart", objectives, searched)       # the study opened
    publish_trial(client, run_id, train_dir, primary=("val/mre_mm", "min"), adaloss=True)  # a trial ended
    table = publish_study(client, info, importance=False)                                  # re-rank the study
    print(front_text(table, info))                                                         # mean ± CI (n), recipes
    configurations(table, info), recipes(table, info)                                      # per config.id; per choice
    print(ui_command(uri), ui_url(uri, experiment_id, "quickstart"))                       # what to open
    report = fidelity_report(client, context)                                              # study.fidelity's report

The drawing modules (matplotlib, plotly, scipy, and torch for a checkpoint's pictures) are imported
on first use, not when the driver starts: a study's start-up does not wait for them.

dashboards/ never imports the driver (study.schema and study.space are shared models, not driver code).
"""

from __future__ import annotations

from dashboards.store import StudyInfo, check_reachable
from dashboards.ui import missing_store, python_command, ui_command, ui_url

__all__ = [
    "StudyInfo",
    "check_reachable",
    "configurations",
    "fidelity_report",
    "front_text",
    "log_fidelity_report",
    "missing_store",
    "publish_study",
    "publish_study_view",
    "publish_trial",
    "python_command",
    "recipes",
    "ui_command",
    "ui_url",
]


def publish_study(client, info: StudyInfo, importance: bool = False):
    """dashboards.pareto.publish_study: rank the trials, tag their runs, rewrite the comparison. -> the table."""
    from dashboards import pareto

    return pareto.publish_study(client, info, importance=importance)


def publish_trial(client, run_id: str, train_dir: str, primary: tuple[str, str], adaloss: bool) -> list[str]:
    """dashboards.trials.publish_trial: a finished trial's pictures and best checkpoint."""
    from dashboards import trials

    return trials.publish_trial(client, run_id, train_dir, primary, adaloss=adaloss)


def publish_study_view(client, experiment_id: str, study: str, objectives, searched) -> None:
    """dashboards.views.publish_study_view: the saved view the printed MLflow link opens."""
    from dashboards import views

    views.publish_study_view(client, experiment_id, study, objectives, searched)


def front_text(table, info: StudyInfo) -> str:
    """dashboards.pareto.front_text: the front and the recipe table, for the terminal."""
    from dashboards import pareto

    return pareto.front_text(table, info)


def configurations(table, info: StudyInfo):
    """dashboards.pareto.configurations: one row per configuration, with 95 % intervals."""
    from dashboards import pareto

    return pareto.configurations(table, info)


def recipes(table, info: StudyInfo):
    """dashboards.pareto.recipes: the recipe table of every searched choice."""
    from dashboards import pareto

    return pareto.recipes(table, info)


def fidelity_report(client, context: dict):
    """dashboards.fidelity.fidelity_report: the fidelity report from its three studies in MLflow."""
    from dashboards import fidelity

    return fidelity.fidelity_report(client, context)


def log_fidelity_report(client, files, report, context: dict) -> str:
    """dashboards.fidelity.log_fidelity_report: the report's files as a run of the fidelity-report experiment."""
    from dashboards import fidelity

    return fidelity.log_fidelity_report(client, files, report, context)
