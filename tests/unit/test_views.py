"""The study's first page in the MLflow UI: the saved view, the link that opens it, the trial's
description, and the names the installed MLflow UI reads (so that an MLflow upgrade that drops
one fails here, not silently in a user's browser)."""

import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from dashboards.ui import ui_url
from dashboards.views import (
    KIND,
    KIND_TAG,
    VIEW_TAG_PREFIX,
    saved_studies,
    publish_study_view,
    study_url,
    trial_note,
    trials_view,
    view_tags,
)

OBJECTIVES = [("val/mre_mm", "min"), ("val/sdr_2mm", "max")]
SEARCHED = ["optim.lr", "target.schedule"]
BUNDLE = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


def test_the_link_opens_the_runs_tab_in_model_training_mode_on_the_studys_view():
    assert study_url("http://127.0.0.1:5000/", "3", "quickstart") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=study-quickstart"
    )
    # a local store: the UI that `ui_command` starts; a tracking server: the server itself
    assert ui_url("sqlite:////x/mlflow.db", "3", "q") == study_url("http://127.0.0.1:5000", "3", "q")
    assert ui_url("https://mlflow.lab:8443", "7", "q").startswith("https://mlflow.lab:8443/#/experiments/7/runs?")


def test_the_view_shows_the_trials_best_first_with_objectives_costs_and_params():
    state = trials_view("quickstart", OBJECTIVES, SEARCHED)
    assert state["searchFilter"] == "tags.`study.role` = 'trial' and tags.`study.name` = 'quickstart'"
    assert state["orderByKey"] == "metrics.`val/mre_mm`" and state["orderByAsc"] is True
    assert state["selectedColumns"] == [
        "tags.`trial.status`",
        "tags.`pareto.rank`",
        "metrics.`val/mre_mm`",
        "metrics.`val/sdr_2mm`",
        "metrics.`cost/gflops`",
        "metrics.`cost/epoch_s`",
        "metrics.`cost/params_m`",
        "metrics.`cost/latency_ms`",
        "params.`optim.lr`",
        "params.`target.schedule`",
    ]
    assert trials_view("q", [("cost/gflops", "min"), ("val/fr", "max")], [])["selectedColumns"][2:4] == [
        "metrics.`cost/gflops`",
        "metrics.`val/fr`",
    ]  # an objective that is a cost is not listed twice
    assert trials_view("q", [("val/auc", "max")], [])["orderByAsc"] is False


def test_the_tags_hold_a_saved_view_envelope():
    tags = view_tags("quickstart", OBJECTIVES, SEARCHED, now_ms=1_700_000_000_000)
    assert tags[KIND_TAG] == KIND == "custom_model_development"
    envelope = json.loads(tags[VIEW_TAG_PREFIX + "study-quickstart"])
    # the UI's check (saved-views chunk): name a string, createdAt a number, state a string
    assert envelope == {
        "name": "study quickstart: trials",
        "createdAt": 1_700_000_000_000,
        "updatedAt": 1_700_000_000_000,
        "state": json.dumps(trials_view("quickstart", OBJECTIVES, SEARCHED)),
    }


def test_the_installed_mlflow_ui_reads_what_the_link_and_the_view_set():
    """A canary of MLflow's bundled UI: the stable strings the link and the saved view depend on.

    Only string literals and object keys are looked for: the minifier renames every variable in each
    MLflow release (3.18 renamed the ones this test once matched), so a variable name here would fail
    on an upgrade that changed nothing. The browser test of the printed link
    (tests/integration/test_first_visit.py) is the authority on the behaviour."""
    text = "\n".join(p.read_text(errors="replace") for p in BUNDLE.glob("*.js"))
    # the URL parameter that opens a saved view, and the experiment-tag prefix it is read from
    assert re.search(r'=\s*"viewStateShareKey"\s*,\s*\w+\s*=\s*"mlflow\.sharedViewState\."', text), (
        "the UI no longer reads ?viewStateShareKey= from the experiment tag mlflow.sharedViewState.<key>"
    )
    # the workflow mode: from the URL first, else the browser's stored choice
    assert '"machine_learning"' in text and '.get("workflowType")' in text
    # the search the shared state may set, and the table state it may set (runsExpanded is then left out)
    assert (
        '["searchFilter","orderByKey","orderByAsc","startTime","lifecycleFilter","modelVersionFilter",'
        '"datasetsFilter"]' in text
    )
    assert (
        '["selectedColumns","columnOrder","columnWidths","runsExpanded","runsPinned","runsHidden",'
        '"runsVisibilityMap","runsHiddenMode",' in text
    )
    assert '"SHOW_ALL"' in text
    # the saved-view envelope, whatever the minifier calls its four values
    assert re.search(r"JSON\.stringify\(\{name:\w+,createdAt:\w+,updatedAt:\w+,state:\w+\}\)", text)


def test_publish_study_view_round_trip(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("landmarks")
    other = client.create_experiment("mine")
    client.set_experiment_tag(other, KIND_TAG, "genai_development")
    publish_study_view(client, exp, "quickstart", OBJECTIVES, SEARCHED)
    publish_study_view(client, exp, "farnet", [("val/mre_mm", "min")], [])  # two studies, one experiment
    publish_study_view(client, other, "mine", OBJECTIVES, [])
    assert sorted(saved_studies(client)) == sorted([(exp, "farnet"), (exp, "quickstart"), (other, "mine")])
    tags = client.get_experiment(exp).tags
    assert tags[KIND_TAG] == KIND
    assert client.get_experiment(other).tags[KIND_TAG] == "genai_development"  # a chosen kind is kept
    first = json.loads(tags[VIEW_TAG_PREFIX + "study-quickstart"])
    assert json.loads(first["state"]) == trials_view("quickstart", OBJECTIVES, SEARCHED)
    publish_study_view(client, exp, "quickstart", OBJECTIVES, SEARCHED)  # --resume: the same view, untouched
    assert json.loads(client.get_experiment(exp).tags[VIEW_TAG_PREFIX + "study-quickstart"]) == first


def test_the_trial_note_leads_with_the_objectives_then_the_costs():
    row = pd.Series(
        {
            "trial": "a1",
            "status": "finished",
            "pareto.rank": 1,
            "val/mre_mm": 1.6,
            "val/sdr_2mm": 71.0,
            "cost/gflops": 4.2,
            "cost/epoch_s": 42.25,
            "cost/workers": 1.0,
            "optim.lr": 3e-4,
            "target.schedule": "adaloss",
        }
    )
    assert trial_note(row, OBJECTIVES, SEARCHED, "quickstart") == (
        "**val/mre_mm 1.6** (min) · **val/sdr_2mm 71** (max)\n\n"
        "cost/gflops 4.2 · cost/epoch_s 42.25\n\n"
        "adaloss, lr 3e-4 · finished · Pareto rank 1 (on the front) in study `quickstart`\n"
    )
    row["pareto.rank"], row["status"] = pd.NA, "running"
    assert trial_note(row, [("val/mre_mm", "min")], [], "q").endswith("running · unranked in study `q`\n")


@pytest.mark.parametrize("study", ["quickstart", "a.b-c_1"])
def test_the_view_key_survives_the_url(study):
    from urllib.parse import parse_qs, urlsplit

    fragment = urlsplit(study_url("http://h:1", "1", study)).fragment
    assert parse_qs(fragment.split("?", 1)[1])["viewStateShareKey"] == [f"study-{study}"]
