"""The comparison and the trial pictures against a real MLflow SQLite store, without Ray: runs are
written the way the study driver writes them, then `python -m dashboards.pareto` recomputes the
front from MLflow alone, and a real trainer checkpoint becomes a trial's pictures.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image
from helpers import clean_env, free_port
from test_pareto_html import _check_drawn, _screenshot

from dashboards import importance, pareto_image, plots, trial_plots
from dashboards.trials import best, publish_trial
from study.spec import load_spec
from study.schema import TAG_PARENT, TAG_ROLE, TAG_STATUS, TAG_STUDY, TAG_TRIAL
from study.study_run import open_study_run
from trainables import TrialConfig, fit
from trainables.checkpoint import TrainRun
from trainables.config import apply_overrides

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

SPEC = """\
    study:
      name: cmp
      objectives: [{metric: val/mre_mm, mode: min}, {metric: val/sdr_2mm, mode: max}]
      storage: STORE
      experiment: landmarks   # shared by several studies: the CLI finds the study by its tags
    space:
      optim.lr: {loguniform: [0.0001, 0.01]}
      target.schedule: {choice: [fixed, adaloss]}
      target.sigma: {uniform: [1.0, 4.0], when: {target.schedule: fixed}}
    """

# trial: (status, lr, schedule, sigma, mre, sdr). Hand-ranked on (mre min, sdr max):
#   a (2, 60), b (3, 70), g (2, 60) = a's duplicate: front.  c (3, 60) is dominated by a and g
#   (rank 2). f, stopped early by ASHA, is ranked on what it reached: (4, 55) is dominated by c
#   (rank 3). d (5, 50) is dominated by f too (rank 4). e is running (partial values that would
#   dominate all), h diverged, i finished without val/sdr_2mm: all three unranked.
TRIALS = {
    "a": ("finished", 1e-3, "fixed", 2.0, 2.0, 60.0),
    "b": ("finished", 3e-3, "adaloss", None, 3.0, 70.0),
    "c": ("finished", 5e-4, "fixed", 3.0, 3.0, 60.0),
    "d": ("finished", 2e-4, "adaloss", None, 5.0, 50.0),
    "e": ("running", 1e-3, "fixed", 1.5, 0.5, 99.0),
    "f": ("stopped early", 8e-3, "fixed", 3.5, 4.0, 55.0),
    "g": ("finished", 1e-3, "fixed", 2.0, 2.0, 60.0),
    "h": ("diverged", 9e-3, "adaloss", None, None, None),
    "i": ("finished", 1e-4, "fixed", 1.0, 6.0, None),
}
RANKS = {"a": 1, "b": 1, "g": 1, "c": 2, "f": 3, "d": 4}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    path = tmp / "cmp.yaml"
    path.write_text(textwrap.dedent(SPEC).replace("STORE", str(tmp / "store")))
    spec = load_spec(path)
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    spec.storage_path.mkdir(parents=True)
    study_run = open_study_run(uri, spec)
    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    for tid, (status, lr, schedule, sigma, mre, sdr) in TRIALS.items():
        run = client.create_run(
            study_run.experiment_id,
            run_name=f"cmp-{tid}",
            tags={
                TAG_STUDY: "cmp",
                TAG_ROLE: "trial",
                TAG_TRIAL: tid,
                TAG_PARENT: study_run.run_id,
                TAG_STATUS: status,
            },
        )
        # like the driver: the whole config, so an unsampled target.sigma still has its base value
        params = {"optim.lr": lr, "target.schedule": schedule, "target.sigma": sigma or 2.0, "train.epochs": 10}
        metrics = [Metric(k, v, now, 10) for k, v in (("val/mre_mm", mre), ("val/sdr_2mm", sdr)) if v is not None]
        metrics.append(Metric("target/sigma_0", 2.0, now, 10))  # per-landmark series stay out of the table
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
    proc = subprocess.run(
        [sys.executable, "-m", "dashboards.pareto", "cmp", "--tracking-uri", uri, "--write"],
        cwd=tmp,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"uri": uri, "client": client, "run_id": study_run.run_id, "proc": proc, "tmp": tmp}


def _artifact(store, path: str) -> Path:
    return Path(store["client"].download_artifacts(store["run_id"], path, str(store["tmp"] / "dl")))


def test_trial_runs_are_tagged_with_their_front_and_rank(store):
    mlflow.set_tracking_uri(store["uri"])
    runs = mlflow.search_runs(experiment_names=["landmarks"], filter_string="tags.`study.role` = 'trial'")
    tags = {r["tags.tune.trial_id"]: (r["tags.pareto.front"], r["tags.pareto.rank"]) for _, r in runs.iterrows()}
    expected = {
        t: ("true" if RANKS.get(t) == 1 else "false", str(RANKS[t]) if t in RANKS else "unranked") for t in TRIALS
    }
    assert tags == expected


def test_the_cli_prints_the_front_and_what_it_left_out(store):
    out = store["proc"].stdout
    assert "9 trials, 6 ranked, Pareto front of 3 over val/mre_mm (min), val/sdr_2mm (max)" in out
    front_lines = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in TRIALS]
    assert sorted(front_lines) == ["a", "b", "g"]
    unranked = next(line for line in out.splitlines() if "unranked:" in line)
    assert unranked.startswith("3 unranked: ")
    assert sorted(unranked.removeprefix("3 unranked: ").split(", ")) == [
        "1 diverged",
        "1 missing val/sdr_2mm",
        "1 running",
    ]


def test_the_table_of_all_trials_is_on_the_study_run_as_csv_and_parquet(store):
    csv = pd.read_csv(_artifact(store, "pareto/trials.csv"))
    parquet = pd.read_parquet(_artifact(store, "pareto/trials.parquet"))
    for table in (csv, parquet):
        assert sorted(table["trial"]) == sorted(TRIALS)
        ranks = {t: r for t, r in zip(table["trial"], table["pareto.rank"]) if not pd.isna(r)}
        assert ranks == RANKS
        assert "target/sigma_0" not in table
    # a `when:` that does not hold leaves the param out, though MLflow has its base value
    row = parquet.set_index("trial")
    assert pd.isna(row.loc["b", "target.sigma"]) and row.loc["a", "target.sigma"] == 2.0
    assert row.loc["a", "optim.lr"] == pytest.approx(1e-3)
    assert list(parquet["trial"][:3]) == ["a", "g", "b"]  # front first, best primary first, then by trial id


def test_the_front_plots_are_on_the_study_run(store):
    html = _artifact(store, "pareto/front.html").read_text()
    assert "plotly" in html and all(
        f'"{t}"' in html or f"'{t}'" in html or f">{t}<" in html or t in html for t in ("a", "b", "g")
    )
    png = Image.open(_artifact(store, "pareto/front.png"))
    assert png.format == "PNG" and png.size == pareto_image.pareto_png_size(2)
    assert np.asarray(png.convert("L")).std() > 5  # not a blank canvas


def test_the_front_page_logged_on_the_study_run_draws_in_a_browser(store, chromium, tmp_path):
    page = _artifact(store, "pareto/front.html")
    rgb = _screenshot(chromium, page, tmp_path / "study_front_chromium.png", tmp_path)
    _check_drawn(rgb, 3 * 100)  # three front markers (a and g coincide: one disc, b: another) and the line


def test_parameter_importance_is_on_the_study_run(store):
    import json

    info = json.loads(_artifact(store, "importance/importance.json").read_text())
    # six finished trials with val/mre_mm; target.sigma is unsampled in two (adaloss), so only
    # the two parameters sampled in all six are assessed
    assert set(info["importances"]) == {"optim.lr", "target.schedule"}
    assert sum(info["importances"].values()) == pytest.approx(1.0, abs=1e-6)
    assert "6 finished trials" in info["method"]
    png = Image.open(_artifact(store, "importance/importance.png"))
    assert png.size == importance.importance_png_size(2)
    metrics = store["client"].get_run(store["run_id"]).data.metrics
    assert set(k for k in metrics if k.startswith("importance/")) == {
        "importance/optim.lr",
        "importance/target.schedule",
    }


def test_the_study_run_carries_the_spec_the_environment_and_the_commit(store):
    import json

    run = store["client"].get_run(store["run_id"])
    arts = {a.path for a in store["client"].list_artifacts(store["run_id"])}
    assert {"spec.yaml", "study.json", "environment.json", "pareto", "importance"} <= arts
    env = json.loads(_artifact(store, "environment.json").read_text())
    assert env["packages"]["torch"].startswith("2.14") and "ray" in env["packages"]
    assert run.data.tags["version.torch"] == env["packages"]["torch"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    resolved = json.loads(_artifact(store, "study.json").read_text())["resolved"]
    assert resolved["space"]["target.sigma"] == {"uniform": [1.0, 4.0], "when": {"target.schedule": ["fixed"]}}


def test_a_second_pass_changes_no_tag_and_logs_no_second_copy(store):
    before = {
        r.info.run_id: r.data.tags
        for r in store["client"].search_runs([store["client"].get_run(store["run_id"]).info.experiment_id])
    }
    proc = subprocess.run(
        [sys.executable, "-m", "dashboards.pareto", "cmp", "--tracking-uri", store["uri"], "--write"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0
    after = {
        r.info.run_id: r.data.tags
        for r in store["client"].search_runs([store["client"].get_run(store["run_id"]).info.experiment_id])
    }
    assert {k: {t: v for t, v in tags.items() if t.startswith("pareto.")} for k, tags in before.items()} == {
        k: {t: v for t, v in tags.items() if t.startswith("pareto.")} for k, tags in after.items()
    }
    names = [a.path for a in store["client"].list_artifacts(store["run_id"], "pareto")]
    assert sorted(names) == ["pareto/front.html", "pareto/front.png", "pareto/trials.csv", "pareto/trials.parquet"]


def test_without_write_the_cli_is_a_query_and_writes_nothing(store):
    client, exp = store["client"], store["client"].get_run(store["run_id"]).info.experiment_id

    def snapshot():
        runs = client.search_runs([exp])
        return (
            {r.info.run_id: (r.data.tags, r.data.metrics) for r in runs},
            sorted(a.path for a in client.list_artifacts(store["run_id"], "pareto")),
        )

    before = snapshot()
    proc = subprocess.run(
        [sys.executable, "-m", "dashboards.pareto", "cmp", "--tracking-uri", store["uri"]],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Pareto front of 3" in proc.stdout and "parameter importance" in proc.stdout
    assert "read only: nothing was written" in proc.stdout
    assert snapshot() == before


def test_unknown_study_and_missing_store_fail_with_one_clear_line(store, tmp_path):
    unknown = subprocess.run(
        [sys.executable, "-m", "dashboards.pareto", "nope", "--tracking-uri", store["uri"]],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unknown.returncode == 2 and "no study 'nope'" in unknown.stderr and "['cmp']" in unknown.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "dashboards.pareto", "cmp", "--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "no MLflow store at" in missing.stderr
    assert not (tmp_path / "absent.db").exists()


def test_a_trial_checkpoint_becomes_its_pictures_and_best_weights(tmp_path, tiny_config, recorder):
    # A real trainer run (Adaloss, 3 epochs), its checkpoints laid out as a Train run lays them out.
    cfg = TrialConfig.from_dict(
        apply_overrides(
            tiny_config, {"train.epochs": 3, "target.schedule": "adaloss", "eval.preview": 2, "eval.split": "test2"}
        )
    )
    rec = recorder("ckpts")
    fit(cfg, rec)
    train_dir = tmp_path / "train" / "train_t1"
    train_dir.mkdir(parents=True)
    for i, ckpt in enumerate(rec.checkpoints):
        ckpt.rename(train_dir / f"checkpoint_2026-01-01_00-00-0{i}.000000")
    found = TrainRun(str(train_dir)).saved_metrics()
    assert [m["epoch"] for _, m in found] == [1, 2, 3]
    chosen = best(found, "val/mre_mm", "min")
    assert chosen[1]["val/mre_mm"] == min(m["val/mre_mm"] for m in rec.metrics)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("pics")).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, v, now, m["epoch"]) for m in rec.metrics for k, v in m.items() if k.startswith("target/sigma_")
        ],
    )
    logged = publish_trial(client, run_id, str(train_dir), ("val/mre_mm", "min"), adaloss=True)
    assert sorted(logged) == [
        "checkpoint/checkpoint.pt",
        "checkpoint/metrics.json",
        "plots/ced.png",
        "plots/heatmaps.png",
        "plots/overlays.png",
        "plots/sigma.png",
        "tables/test_test2_per_landmark.txt",
    ]
    out = tmp_path / "dl"
    h, w = cfg.data.input_size
    sizes = {
        "plots/ced.png": plots.CED_PNG_SIZE,
        "plots/sigma.png": plots.SIGMA_PNG_SIZE,
        "plots/overlays.png": trial_plots.overlay_png_size(2, h, w),
        "plots/heatmaps.png": trial_plots.overlay_png_size(2, h, w),
    }
    for path, size in sizes.items():
        png = Image.open(client.download_artifacts(run_id, path, str(out)))
        assert png.format == "PNG" and png.size == size, path
        assert np.asarray(png.convert("L")).std() > 5, path
    import torch

    state = torch.load(client.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(out)), weights_only=True)
    assert state["epoch"] == chosen[1]["epoch"]


def test_the_ui_serves_the_store_on_loopback(store):
    import json
    import os
    import signal
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboards.ui", "--tracking-uri", store["uri"], "--port", str(port)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
        deadline = time.monotonic() + 90
        while True:  # readiness poll, bounded
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    names = {e["name"] for e in json.load(r)["experiments"]}
                    break
            except OSError:
                # (its output is read below, after the kill: the server's children hold the pipe open)
                assert proc.poll() is None and time.monotonic() < deadline, "the UI did not answer in 90 s"
                time.sleep(0.5)
        assert "landmarks" in names
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert f"MLflow UI on http://127.0.0.1:{port}" in out and "--host 127.0.0.1" in out


def test_the_ui_refuses_a_store_that_does_not_exist(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dashboards.ui", "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no MLflow store at" in proc.stderr and not (tmp_path / "x.db").exists()
