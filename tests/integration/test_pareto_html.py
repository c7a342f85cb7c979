"""The Pareto page draws in a real browser: headless Chromium renders it offline (plotly.js is in the
page) and the screenshot shows the plot, with the front's colour, not a blank page.

The screenshots are also copied to $PLOTS_SHOTS_DIR (default /tmp/plots-shots) to look at."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboards.plots import FRONT_COLOR
from dashboards.ranking import rank_table
from dashboards.pareto_page import pareto_html

pytestmark = pytest.mark.integration

NAN = float("nan")
SEARCHED = ["optim.lr", "target.schedule", "target.adaloss.rho"]
FRONT_RGB = tuple(int(FRONT_COLOR[i : i + 2], 16) for i in (1, 3, 5))


def _table(n: int = 24, seed: int = 0) -> pd.DataFrame:
    """n random trials with three objectives (ranked by the test that uses it, with rank_table);
    the last trial diverged and has no val/mre_mm."""
    rng = np.random.default_rng(seed)
    mre = rng.uniform(1.2, 3.0, n)
    gflops = rng.uniform(2.0, 40.0, n)
    sdr = 100 - 20 * mre + rng.normal(0, 3, n)
    schedule = rng.choice(["fixed", "adaloss"], n)
    df = pd.DataFrame(
        {
            "trial": [f"{i:04x}{seed:04x}" for i in range(n)],
            "run_id": [f"run{i}" for i in range(n)],
            "status": rng.choice(["finished", "stopped early"], n),
            "val/mre_mm": mre,
            "cost/gflops": gflops,
            "val/sdr_2mm": sdr,
            "optim.lr": 10 ** rng.uniform(-4, -2, n),
            "target.schedule": schedule,
            "target.adaloss.rho": [
                float(r) if s == "adaloss" else None for s, r in zip(schedule, rng.uniform(0.8, 1, n))
            ],
        }
    )
    df.loc[n - 1, ["val/mre_mm", "val/sdr_2mm"]] = NAN
    df.loc[n - 1, "status"] = "diverged"
    return df


def _screenshot(exe: str, page, out, tmp_path):
    profile = tmp_path / f"profile-{out.stem}"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1200,900",
        "--virtual-time-budget=10000",
        f"--screenshot={out}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.exists(), f"chromium wrote no screenshot (rc {done.returncode}):\n{done.stderr[-2000:]}"
    shots = os.environ.get("PLOTS_SHOTS_DIR", "/tmp/plots-shots")
    os.makedirs(shots, exist_ok=True)
    shutil.copy(out, os.path.join(shots, out.name))
    with Image.open(out) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _check_drawn(rgb: np.ndarray, min_front_px: int) -> None:
    assert rgb.shape[:2] == (900, 1200)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 200  # text, grid, markers, colour scale: not blank
    near_front = (np.abs(rgb - FRONT_RGB).sum(-1) < 40).sum()
    assert near_front > min_front_px, f"only {near_front} px of the front colour {FRONT_COLOR}"


@pytest.mark.parametrize(
    "objectives",
    [
        [("val/mre_mm", "min")],
        [("val/mre_mm", "min"), ("cost/gflops", "min")],
        [("val/mre_mm", "min"), ("cost/gflops", "min"), ("val/sdr_2mm", "max")],
    ],
    ids=["1d", "2d", "3d"],
)
def test_pareto_page_renders_offline(chromium, tmp_path, objectives):
    table = rank_table(_table(seed=len(objectives)), objectives)  # ranks checked by hand in test_pareto.py
    page = tmp_path / f"pareto_{len(objectives)}d.html"
    page.write_text(
        pareto_html(table, objectives, SEARCHED, f"phantom study, {len(objectives)} objective(s)"), encoding="utf-8"
    )
    rgb = _screenshot(chromium, page, tmp_path / f"pareto_{len(objectives)}d_chromium.png", tmp_path)
    # Each front marker is a 12-16 px disc or star; one alone is over 100 px of the colour.
    _check_drawn(rgb, 100)


# ------------------------------------------------------------------- a study with repeats, from MLflow

REPEATS_SPEC = """\
study:
  name: rep
  objectives: [{metric: val/mre_mm, mode: min}]
  storage: STORE
space:
  target.schedule: {choice: [fixed, adaloss]}
  optim.lr: {choice: [0.001, 0.01]}
"""
# A 2 × 2 grid, 3 repeats each (config.repeat k: train.seed = base + k); None: the repeat failed / diverged.
#   a1 adaloss 1e-3: 4.0, 4.5, 5.0   f1 fixed 1e-3: 4.3, 4.9, 5.2
#   a2 adaloss 1e-2: 6.0, 6.1, failed   f2 fixed 1e-2: 7.0, diverged, 7.4
GRID = {
    "a1": ("adaloss", 0.001, [4.0, 4.5, 5.0]),
    "f1": ("fixed", 0.001, [4.3, 4.9, 5.2]),
    "a2": ("adaloss", 0.01, [6.0, 6.1, "failed"]),
    "f2": ("fixed", 0.01, [7.0, "diverged", 7.4]),
}


@pytest.fixture(scope="module")
def repeats_store(tmp_path_factory):
    import sys
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    from helpers import clean_env

    from study.schema import TAG_CONFIG, TAG_PARENT, TAG_REPEAT, TAG_ROLE, TAG_STATUS, TAG_STUDY, TAG_TRIAL
    from study.spec import load_spec
    from study.study_run import open_study_run

    tmp = tmp_path_factory.mktemp("rep")
    path = tmp / "rep.yaml"
    path.write_text(REPEATS_SPEC.replace("STORE", str(tmp / "store")))
    spec = load_spec(path)
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    spec.storage_path.mkdir(parents=True)
    study_run = open_study_run(uri, spec)
    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    for cid, (schedule, lr, values) in GRID.items():
        for k, v in enumerate(values):
            status = v if isinstance(v, str) else "finished"
            run = client.create_run(
                study_run.experiment_id,
                run_name=f"rep-{cid}_{k}",
                tags={
                    TAG_STUDY: "rep",
                    TAG_ROLE: "trial",
                    TAG_TRIAL: f"{cid}_{k}",
                    TAG_PARENT: study_run.run_id,
                    TAG_STATUS: status,
                    TAG_CONFIG: f"{cid}_0",
                    TAG_REPEAT: str(k),
                },
            )
            params = {"target.schedule": schedule, "optim.lr": lr, "train.seed": k}
            metrics = [Metric("cost/epoch_s", 1.2 if schedule == "adaloss" else 1.0, now, 3)]
            if not isinstance(v, str):
                metrics.append(Metric("val/mre_mm", v, now, 3))
            client.log_batch(run.info.run_id, params=[Param(a, str(b)) for a, b in params.items()], metrics=metrics)
    proc = subprocess.run(
        [sys.executable, "-m", "dashboards.pareto", "rep", "--tracking-uri", uri, "--write"],
        cwd=tmp,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"uri": uri, "client": client, "run_id": study_run.run_id, "proc": proc, "tmp": tmp}


def test_a_study_with_repeats_is_compared_by_configuration(repeats_store):
    client, out = repeats_store["client"], repeats_store["proc"].stdout
    print(out)  # pytest -s shows what `python -m dashboards.pareto rep --write` printed
    # a1: mean 4.5, sd 0.5, half 4.303 · 0.5 / √3 = 1.2422; the front is a1 alone
    assert "12 trials of 4 configurations, 4 configurations ranked on their means, Pareto front of 1" in out
    assert "4.5 ± 1.2 (n = 3)" in out
    # schedule: a1 vs f1, same lr and seeds: d = -0.3, -0.4, -0.2, mean -0.3, sd 0.1, half 4.303 · 0.1 / √3 = 0.2484
    line = next(x for x in out.splitlines() if x.split()[:2] == ["target.schedule", "adaloss"])
    assert "-0.3 [-0.548" in line and ", -0.051" in line and "paired t" in line and line.rstrip().endswith("better")
    dl = str(repeats_store["tmp"] / "dl")
    recipes = pd.read_csv(client.download_artifacts(repeats_store["run_id"], "comparison/recipes.csv", dl))
    lr = recipes[recipes["param"] == "optim.lr"].astype({"value": str}).set_index("value")
    # lr: a1 (4.5) vs a2 (6.05, its repeat 2 failed): pairs 0, 1: d = -2.0, -1.6, mean -1.8, sd 0.28284,
    # half 12.706 · 0.28284 / √2 = 2.5412: [-4.3412, 0.7412]
    assert lr.loc["0.001", "diff"] == pytest.approx(-1.8) and lr.loc["0.001", "diff.ci_low"] == pytest.approx(
        -4.3412, abs=2e-3
    )
    assert lr.loc["0.001", "verdict"] == "no clear difference at n = 2 pairs"
    configs = pd.read_parquet(
        client.download_artifacts(repeats_store["run_id"], "comparison/configurations.parquet", dl)
    ).set_index("config.id")
    assert configs.loc["a2_0", ["repeats.n", "repeats.failed"]].tolist() == [2, 1]
    assert configs.loc["f2_0", "val/mre_mm"] == pytest.approx(7.2) and configs.loc["f2_0", "repeats.failed"] == 1
    assert client.download_artifacts(repeats_store["run_id"], "comparison/recipes.md", dl)
    # every repeat carries its configuration's rank; a failed repeat stays unranked
    tags = {
        r.data.tags["tune.trial_id"]: r.data.tags["pareto.rank"]
        for r in client.search_runs(
            [client.get_run(repeats_store["run_id"]).info.experiment_id], "tags.`study.role` = 'trial'"
        )
    }
    assert tags["a1_0"] == tags["a1_2"] == "1" and tags["a2_2"] == "unranked" and tags["f2_1"] == "unranked"
    assert tags["a2_0"] == tags["a2_1"] != "1"


def test_the_pareto_page_with_repeats_draws_error_bars_in_a_browser(repeats_store, chromium, tmp_path):
    client = repeats_store["client"]
    page = Path(client.download_artifacts(repeats_store["run_id"], "pareto/front.html", str(tmp_path)))
    html = page.read_text()
    assert "error_y" in html and "interval overlaps the front" in html
    rgb = _screenshot(chromium, page, tmp_path / "pareto_repeats_chromium.png", tmp_path)
    _check_drawn(rgb, 100)
    # The error bars: thin vertical grey lines (antialiased, so any neutral grey darker than the grid). f2's
    # interval, 7.2 ± 2.5 mm, spans ~490 px of the 900 px screenshot; on the pages without bars the
    # longest such column (the colourbar's edge) is ~300 px.
    grey = (np.ptp(rgb, axis=-1) < 12) & (rgb.mean(-1) > 110) & (rgb.mean(-1) < 225)
    longest = int(grey[100:700].sum(0).max())
    assert longest > 400, f"no error bar: the longest grey column is {longest} px"
