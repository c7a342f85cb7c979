"""The fidelity report command on its tiny configuration: the real CLI (`python -m study.fidelity --tiny`),
which trains the phantom teacher, runs the three fidelity studies through `python -m study.run` (real
Ray, Optuna's grid, a real MLflow SQLite store) and writes the report.

Ray: the three studies join the session's shared cluster (conftest.py; `study.fidelity --address`).

Checks that every claim row is in reports' Markdown and CSV, that each row's figures are the ones the
trial runs hold in MLflow (recomputed here from the runs, not from the report's code), and that the
report was logged to the `fidelity-report` experiment. 19 trials of 1 epoch at 64×32, one repeat each.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from helpers import clean_env

from dashboards.fidelity import CLAIMS, METRIC, REPORT_EXPERIMENT, SIGMA_CLAIM
from study.fidelity import STUDIES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory, ray_cluster):
    tmp = tmp_path_factory.mktemp("fidelity")
    out = tmp / "reports" / "fidelity.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "study.fidelity",
            "--tiny",
            "--storage",
            str(tmp / "studies"),
            "--out",
            str(out),
            "--address",
            ray_cluster["address"],
        ],
        cwd=tmp,
        env=clean_env(**ray_cluster["env"]),
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {"tmp": tmp, "out": out, "stdout": done.stdout, "uri": f"sqlite:///{tmp / 'studies' / 'mlflow.db'}"}


def _runs(client, study: str) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, filter_string=f"tags.`study.name` = '{study}' and tags.`study.role` = 'trial'")


def test_every_claim_row_is_written_and_logged(report):
    md = report["out"].read_text()
    claims = pd.read_csv(report["out"].with_name("fidelity_claims.csv"))
    assert list(claims["claim"]) == [c.text for c in CLAIMS[:4]] + [SIGMA_CLAIM[1]] + [c.text for c in CLAIMS[4:]]
    for claim in claims["claim"]:
        assert f"| {claim} |" in md
    assert set(claims["verdict"]) <= {"held", "not held", "unclear"}
    assert report["out"].with_suffix(".png").stat().st_size > 10_000
    client = MlflowClient(report["uri"])
    exp = client.get_experiment_by_name(REPORT_EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "fidelity.md",
        "fidelity.png",
        "fidelity_claims.csv",
    }
    assert sum(run.data.metrics[k] for k in ("claims/held", "claims/not_held", "claims/unclear")) == len(claims)
    assert "wrote" in report["stdout"] and "claims" in report["stdout"]


def test_each_row_is_computed_from_the_trial_runs(report):
    client = MlflowClient(report["uri"])
    claims = pd.read_csv(report["out"].with_name("fidelity_claims.csv")).set_index("claim")
    for study in STUDIES:
        runs = _runs(client, study)
        assert len(runs) == {"fidelity_adaloss": 6, "fidelity_farnet": 6, "fidelity_crosstask": 7}[study]
        for claim in (c for c in CLAIMS if c.study == study):
            # one repeat: each side is its configuration's single run (the lowest where several match)
            a, b = _side(runs, claim.better), _side(runs, claim.than)
            row = claims.loc[claim.text]
            if math.isfinite(a) and math.isfinite(b):
                assert row["diff"] == pytest.approx(a - b, abs=1e-9), claim.text
                assert row["better"].startswith(f"{a:.2f} (n = 1)")
                assert row["verdict"] == "unclear"  # no interval with one repeat
    sigma = claims.loc[SIGMA_CLAIM[1]]
    assert sigma["verdict"] == "unclear"  # one epoch: σ has not moved yet


def _side(runs: list, values: dict) -> float:
    ok = [
        r.data.metrics[METRIC]
        for r in runs
        if all(_same(r.data.params.get(k), v) for k, v in values.items()) and METRIC in r.data.metrics
    ]
    return min(ok) if ok else math.nan


def _same(param: str | None, value) -> bool:
    if param is None:
        return False
    if isinstance(value, bool):
        return param == str(value)
    if isinstance(value, float):
        return math.isclose(float(param), value)
    return param == str(value)
