"""The Pareto page draws in a real browser: headless Chromium renders it offline (plotly.js is in the
page) and the screenshot shows the plot, with the front's colour, not a blank page.

The screenshots are also copied to $PLOTS_SHOTS_DIR (default /tmp/plots-shots) to look at."""

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboards.plots import FRONT_COLOR
from dashboards.ranking import rank_table
from dashboards.study_plots import pareto_html

pytestmark = pytest.mark.integration

NAN = float("nan")
SEARCHED = ["optim.lr", "target.schedule", "target.adaloss.rho"]
FRONT_RGB = tuple(int(FRONT_COLOR[i:i + 2], 16) for i in (1, 3, 5))


def _table(n: int = 24, seed: int = 0) -> pd.DataFrame:
    """n random trials with three objectives (ranked by the test that uses it, with rank_table);
    the last trial diverged and has no val/mre_mm."""
    rng = np.random.default_rng(seed)
    mre = rng.uniform(1.2, 3.0, n)
    gflops = rng.uniform(2.0, 40.0, n)
    sdr = 100 - 20 * mre + rng.normal(0, 3, n)
    schedule = rng.choice(["fixed", "adaloss"], n)
    df = pd.DataFrame({
        "trial": [f"{i:04x}{seed:04x}" for i in range(n)],
        "run_id": [f"run{i}" for i in range(n)],
        "status": rng.choice(["finished", "stopped early"], n),
        "val/mre_mm": mre, "cost/gflops": gflops, "val/sdr_2mm": sdr,
        "optim.lr": 10 ** rng.uniform(-4, -2, n), "target.schedule": schedule,
        "target.adaloss.rho": [float(r) if s == "adaloss" else None for s, r in zip(schedule, rng.uniform(0.8, 1, n))],
    })
    df.loc[n - 1, ["val/mre_mm", "val/sdr_2mm"]] = NAN
    df.loc[n - 1, "status"] = "diverged"
    return df


def _screenshot(exe: str, page, out, tmp_path):
    profile = tmp_path / f"profile-{out.stem}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1200,900", "--virtual-time-budget=10000",
           f"--screenshot={out}", page.resolve().as_uri()]
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


@pytest.mark.parametrize("objectives", [
    [("val/mre_mm", "min")],
    [("val/mre_mm", "min"), ("cost/gflops", "min")],
    [("val/mre_mm", "min"), ("cost/gflops", "min"), ("val/sdr_2mm", "max")],
], ids=["1d", "2d", "3d"])
def test_pareto_page_renders_offline(chromium, tmp_path, objectives):
    table = rank_table(_table(seed=len(objectives)), objectives)  # ranks checked by hand in test_pareto.py
    page = tmp_path / f"pareto_{len(objectives)}d.html"
    page.write_text(pareto_html(table, objectives, SEARCHED, f"phantom study, {len(objectives)} objective(s)"),
                    encoding="utf-8")
    rgb = _screenshot(chromium, page, tmp_path / f"pareto_{len(objectives)}d_chromium.png", tmp_path)
    # Each front marker is a 12-16 px disc or star; one alone is over 100 px of the colour.
    _check_drawn(rgb, 100)
