"""The one door from the study driver into dashboards/: what the driver publishes to MLflow as a
study runs, and the few reading helpers it prints from.

    publish_study_view(client, experiment_id, "quickstart", objectives, searched)       # the study opened
    publish_trial(client, run_id, train_dir, primary=("val/mre_mm", "min"), adaloss=True)  # a trial ended
    table = publish_study(client, info, importance=False)                                  # re-rank the study
    print(front_text(table, info))                                                         # mean ± CI (n), recipes
    configs, effects = configurations(table, info), recipes(table, info)                   # per config.id; per choice
    print(ui_command(uri), ui_url(uri, experiment_id, "quickstart"))                       # what to open
    report = fidelity_report(client, context)                                              # study.fidelity's report

dashboards/ never imports the driver (study.schema and study.space are shared models, not driver code).
"""

from __future__ import annotations

from dashboards.fidelity import build_report as fidelity_report, log_report as log_fidelity_report
from dashboards.pareto import configurations, front_text, recipes, refresh as publish_study
from dashboards.store import StudyInfo, check_reachable
from dashboards.trials import log_trial_artifacts as publish_trial
from dashboards.ui import missing_store, python_command, ui_command, ui_url
from dashboards.views import set_study_view as publish_study_view

__all__ = ["StudyInfo", "check_reachable", "configurations", "fidelity_report", "front_text", "log_fidelity_report", "missing_store", "publish_study", "publish_study_view",
           "publish_trial", "python_command", "recipes", "ui_command", "ui_url"]
