"""The study and trial pictures: exact PNG sizes, nothing blank, markers and heatmaps where the
pixel-centre convention puts them, and Pareto pages that count what they leave out.

Set PLOTS_SHOTS_DIR=/some/folder to keep a copy of every PNG these tests draw (to look at them)."""

import itertools
import math
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboards.plots import (
    CED_PNG_SIZE,
    EMPTY_PARETO_TEXT,
    FACE68_REGIONS,
    OVERLAY_GAP_PX,
    OVERLAY_HEADER_PX,
    OVERLAY_TITLE_PX,
    SIGMA_PNG_SIZE,
)
from dashboards import importance, pareto_image, trial_plots
from dashboards.importance import importance_png, importance_png_size
from dashboards.pareto_page import pareto_figure, pareto_html
from dashboards.pareto_image import pareto_png, pareto_png_size
from dashboards.plots import OVERLAP_NAME, recipe, short_number
from dashboards.trial_plots import (
    ced_png,
    ced_summary,
    heatmaps_png,
    landmark_styles,
    overlay_png_size,
    overlays_png,
    sigma_png,
)
from trainables.data import landmark_names

NAN = float("nan")
MRE, GF, SDR = ("val/mre_mm", "min"), ("cost/gflops", "min"), ("val/sdr_2mm", "max")
SEARCHED = ["optim.lr", "target.schedule", "target.adaloss.rho"]


def _png(path, size):
    """The file is a PNG of exactly `size` px with something drawn on it; returns it as RGB (H, W, 3)."""
    if os.environ.get("PLOTS_SHOTS_DIR"):
        os.makedirs(os.environ["PLOTS_SHOTS_DIR"], exist_ok=True)
        shutil.copy(path, os.path.join(os.environ["PLOTS_SHOTS_DIR"], os.path.basename(path)))
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == tuple(size)
        rgb = np.asarray(im.convert("RGB"))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 2
    assert rgb.std() > 5
    return rgb


def _table():
    """7 trials, val/mre_mm and cost/gflops both min. a1 and b2 tie at (1.0, 5.0), both on the front
    with c3 (2.0, 2.0). Rank 2: d4 (1.5, 6.0) and e5 (2.5, 3.0); rank 3: f6 (3.0, 7.0), dominated by d4.
    g7 diverged before any validation: no val/mre_mm, so no rank."""
    rows = [
        ("a1a1a1a1", "finished", True, 1, 1.0, 5.0, 60.0, 1e-3, "adaloss", 0.9),
        ("b2b2b2b2", "finished", True, 1, 1.0, 5.0, 60.0, 2e-3, "adaloss", 0.8),
        ("c3c3c3c3", "stopped early", True, 1, 2.0, 2.0, 40.0, 3e-4, "fixed", None),
        ("d4d4d4d4", "finished", False, 2, 1.5, 6.0, 55.0, 1e-2, "fixed", None),
        ("e5e5e5e5", "stopped early", False, 2, 2.5, 3.0, 35.0, 5e-4, "adaloss", 0.95),
        ("f6f6f6f6", "finished", False, 3, 3.0, 7.0, 20.0, 5e-2, "fixed", None),
        ("g7g7g7g7", "diverged", None, None, NAN, 4.0, NAN, 1.0, "adaloss", 0.5),
    ]
    df = pd.DataFrame(
        rows,
        columns=[
            "trial",
            "status",
            "pareto.front",
            "pareto.rank",
            "val/mre_mm",
            "cost/gflops",
            "val/sdr_2mm",
            *SEARCHED,
        ],
    )
    df["run_id"] = [f"run{i}" for i in range(len(df))]
    df["pareto.rank"] = df["pareto.rank"].astype("Int64")
    return df


@pytest.fixture
def drawn(monkeypatch):
    """What every matplotlib figure drawn by the test shows, read just before it is saved: a list
    of {"legend": [entry texts], "xlabel": [per axes]}."""
    seen = []
    for module in (pareto_image, importance, trial_plots):

        def spy(fig, path, real=module.save):
            legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
            seen.append(
                {
                    "legend": [t.get_text() for leg in legends if leg for t in leg.get_texts()],
                    "xlabel": [ax.get_xlabel() for ax in fig.axes],
                }
            )
            return real(fig, path)

        monkeypatch.setattr(module, "save", spy)
    return seen


def _readable(html: str) -> str:
    """The page with plotly's JSON escapes (\\u002f for "/", \\u2014 for "—") turned back into text."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), html)


# ------------------------------------------------------------------------------------------- Pareto


def test_pareto_html_two_objectives_counts_and_hover():
    html = pareto_html(_table(), [MRE, GF], SEARCHED, "ceph farnet")
    assert html.lstrip().lower().startswith("<!doctype html>") and "</html>" in html
    assert "plotly.js" in html.lower() and len(html) > 1_000_000  # the library itself is inside
    text = _readable(html)
    assert "<title>ceph farnet — 6 trials ranked, front of 3; 1 unranked: 1 diverged</title>" in text
    for t in ("a1a1a1a1", "b2b2b2b2", "c3c3c3c3", "d4d4d4d4", "e5e5e5e5", "f6f6f6f6"):
        assert f"trial {t}" in text
    # The excluded trial is counted above but drawn nowhere: its id is not in any hover text.
    assert "g7g7g7g7" not in text
    assert "target.adaloss.rho: —" in text  # inactive conditional param
    assert "optim.lr: 0.0003" in text and "status: stopped early" in text and "pareto.rank: 3" in text
    assert "val/mre_mm (min, ← better)" in text and "cost/gflops (min, ↓ better)" in text
    assert '"shape":"hv"' in text  # the front's staircase


def test_pareto_html_one_objective_without_a_cost_is_best_first():
    # One objective, val/mre_mm: a1 and b2 tie at 1.0 (both rank 1), then d4 1.5, c3 2.0, e5 2.5, f6 3.0.
    # No cost column to draw it against: the trials in order, best first.
    table = _table().drop(columns=["cost/gflops"])
    table["pareto.rank"] = pd.array([1, 1, 3, 2, 4, 5, None], dtype="Int64")
    html = _readable(pareto_html(table, [MRE], SEARCHED, "one"))
    assert "6 trials ranked, front of 2; 1 unranked: 1 diverged" in html
    assert "best (rank 1)" in html and "val/mre_mm (min, ↓ better)" in html and "trials, best first" in html
    assert '"ticktext":["a1a1a1a1","b2b2b2b2","d4d4d4d4","c3c3c3c3","e5e5e5e5","f6f6f6f6"]' in html


def test_pareto_html_three_objectives_is_a_matrix():
    html = _readable(pareto_html(_table(), [MRE, GF, SDR], SEARCHED, "three"))
    # other ranks + front on the same axes, + the stopped-early legend key (c3, e5), drawn nowhere
    assert html.count('"type":"splom"') == 3
    assert "val/sdr_2mm (max)" in html and "front of" in html and "1 unranked: 1 diverged" in html


def test_pareto_subtitle_says_why_each_trial_is_unranked():
    table = _table()
    table.loc[5, ["cost/gflops", "pareto.rank"]] = [NAN, pd.NA]
    table.loc[0, "pareto.rank"] = pd.NA  # a1 has both metrics but was not ranked (e.g. the ranker left it out)
    html = _readable(pareto_html(table, [MRE, GF], [], "t"))
    # the wording of dashboards.pareto.describe_excluded, which the CLI prints too
    assert "4 trials ranked, front of 2; 3 unranked: 1 not ranked, 1 missing cost/gflops, 1 diverged" in html


def test_pareto_empty_table_says_so(tmp_path):
    table = _table().iloc[[6]]  # only the excluded trial
    html = _readable(pareto_html(table, [MRE, GF], SEARCHED, "empty"))
    assert EMPTY_PARETO_TEXT in html and "0 trials ranked, front of 0; 1 unranked: 1 diverged" in html
    _png(pareto_png(table, [MRE, GF], "empty", tmp_path / "pareto_empty.png"), pareto_png_size(2))
    no_rows = _table().iloc[:0]
    assert "0 trials ranked, front of 0" in _readable(pareto_html(no_rows, [MRE], [], "none"))
    _png(pareto_png(no_rows, [MRE, GF, SDR], "none", tmp_path / "x" / "none.png"), pareto_png_size(3))


def test_pareto_rejects_a_bad_mode():
    with pytest.raises(ValueError, match="'best'.*'min' or 'max'"):
        pareto_html(_table(), [("val/mre_mm", "best")], [], "t")


def test_pareto_png_size_formula():
    assert pareto_png_size(1) == pareto_png_size(2) == (1000, 750)
    assert pareto_png_size(3) == (120 + 400 * 2, 170 + 400 * 2)
    assert pareto_png_size(4) == (1320, 1370)


@pytest.mark.parametrize("objectives", [[MRE], [MRE, GF], [MRE, GF, SDR], [MRE, GF, SDR, ("val/fr", "min")]])
def test_pareto_png(tmp_path, objectives):
    table = _table()
    table["val/fr"] = [1.0, 1.0, 0.5, 2.0, 0.0, 3.0, NAN]
    path = pareto_png(table, objectives, "ceph farnet", tmp_path / "sub" / f"pareto_{len(objectives)}.png")
    assert path == tmp_path / "sub" / f"pareto_{len(objectives)}.png"
    rgb = _png(path, pareto_png_size(len(objectives)))
    # The front's colour (#e4572e) is in the picture.
    near = (np.abs(rgb.astype(int) - (0xE4, 0x57, 0x2E)).sum(-1) < 30).sum()
    assert near > 50


def test_recipe_is_the_searched_values_short():
    row = {
        "optim.lr": 3e-4,
        "target.schedule": "adaloss",
        "target.adaloss.rho": None,
        "model.refine": True,
        "a.sigma": 2.5,
        "b.sigma": 1e-5,
        "model.input_size": [256, 208],
    }
    # text choices bare, first; numbers and booleans by the last part of their path; inactive ones left out
    assert recipe(row, ["optim.lr", "target.schedule", "target.adaloss.rho"]) == "adaloss, lr 3e-4"
    assert recipe(row, ["model.refine", "a.sigma", "b.sigma"]) == "refine yes, a.sigma 2.5, b.sigma 1e-5"
    assert recipe(row, ["model.input_size"]) == "input_size 256×208"
    assert recipe(row, []) == ""
    assert len(recipe({f"p.x{i}": "abcdefgh" for i in range(9)}, [f"p.x{i}" for i in range(9)])) == 48
    assert [short_number(v) for v in (3e-4, 2.5e-5, 0.95, 40.0, 1.5e4, 123.456)] == [
        "3e-4",
        "2.5e-5",
        "0.95",
        "40",
        "1.5e4",
        "123",
    ]


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_pareto_html_labels_the_front_by_recipe_and_hovers_the_trial_id():
    # _table's front: a1 and b2 at (1.0, 5.0) share one label; c3 at (2.0, 2.0), lr 3e-4, fixed (no rho)
    fig = pareto_figure(_table(), [MRE, GF], SEARCHED, "t")
    labels = _trace(fig, "labels")
    assert list(labels.text) == ["adaloss, lr 1e-3, rho 0.9 / adaloss, lr 2e-3, rho 0.8", "fixed, lr 3e-4"]
    assert list(labels.x) == [1.0, 2.0] and list(labels.y) == [5.0, 2.0]
    text = _readable(pareto_html(_table(), [MRE, GF], SEARCHED, "t"))
    assert "fixed, lr 3e-4" in text and "<b>fixed, lr 3e-4</b><br>trial c3c3c3c3<br>status: stopped early" in text
    # with nothing searched, a point is labelled by its trial id
    assert list(_trace(pareto_figure(_table(), [MRE, GF], [], "t"), "labels").text) == [
        "a1a1a1a1 / b2b2b2b2",
        "c3c3c3c3",
    ]


def test_stopped_early_and_unranked_trials_have_their_own_markers_and_legend_entries(tmp_path, drawn):
    # c3 (front) and e5 (rank 2) were stopped early by ASHA. a1 has both values but no rank (say,
    # still running): drawn hollow. g7 has no val/mre_mm: not drawn.
    table = _table()
    table.loc[0, ["pareto.rank", "status"]] = [pd.NA, "running"]
    fig = pareto_figure(table, [MRE, GF], SEARCHED, "t")
    seen = {}
    for t in fig.data:
        if t.mode == "markers" and t.text is not None:
            for text, symbol in zip(t.text, t.marker.symbol):
                seen[re.search(r"trial (\w+)", text).group(1)] = (t.name, symbol)
    assert seen == {
        "a1a1a1a1": ("unranked (running, failed, …)", "circle-open"),
        "b2b2b2b2": ("front (rank 1)", "circle"),
        "c3c3c3c3": ("front (rank 1)", "triangle-down"),
        "d4d4d4d4": ("other ranks", "circle"),
        "e5e5e5e5": ("other ranks", "triangle-down"),
        "f6f6f6f6": ("other ranks", "circle"),
    }
    key = _trace(fig, "stopped early (ASHA)")
    assert key.marker.symbol == "triangle-down" and list(key.x) == [None]  # a legend entry, drawn nowhere
    assert _trace(fig, "unranked (running, failed, …)").marker.color == "#7f7f7f"
    # the same in the PNG's legend, and in the 3-objective matrix
    pareto_png(table, [MRE, GF], "t", tmp_path / "pareto_markers.png", searched=SEARCHED)
    assert drawn[-1]["legend"] == [
        "other ranks",
        "unranked (running, failed, …)",
        "front (rank 1)",
        "stopped early (ASHA)",
    ]
    pareto_png(table, [MRE, GF, SDR], "t", tmp_path / "pareto_markers_3.png", searched=SEARCHED)
    assert drawn[-1]["legend"] == [
        "front (rank 1)",
        "other ranks",
        "unranked (running, failed, …)",
        "stopped early (ASHA)",
    ]
    names = {t.name for t in pareto_figure(table, [MRE, GF, SDR], SEARCHED, "t").data}
    assert {"stopped early (ASHA)", "unranked (running, failed, …)"} <= names
    # nobody stopped early: no such legend entry
    table["status"] = table["status"].replace("stopped early", "finished")
    assert "stopped early (ASHA)" not in {t.name for t in pareto_figure(table, [MRE, GF], SEARCHED, "t").data}


def test_one_objective_is_drawn_against_the_cost_the_trials_differ_in(tmp_path, drawn):
    # One objective, val/mre_mm, ranked by hand: a1, b2 (1.0 mm, 5 GFLOPs) rank 1; d4 (1.5, 6) 2;
    # c3 (2.0, 2) 3; e5 (2.5, 3) 4; f6 (3.0, 7) 5. No cheaper-or-equal trial beats c3 (2 GFLOPs) or
    # a1, b2 (5 GFLOPs): the staircase runs (2, 2.0) → (5, 1.0), cheapest first; d4, e5, f6 are beaten.
    table = _table()
    table["pareto.rank"] = pd.array([1, 1, 3, 2, 4, 5, None], dtype="Int64")
    fig = pareto_figure(table, [MRE], SEARCHED, "one")
    assert fig.layout.xaxis.title.text == "cost/gflops (min, ← better)"
    assert fig.layout.yaxis.title.text == "val/mre_mm (min, ↓ better)"
    line = _trace(fig, "best for its cost/gflops")
    assert list(line.x) == [2.0, 5.0, 5.0] and list(line.y) == [2.0, 1.0, 1.0] and line.line.shape == "hv"
    assert list(_trace(fig, "labels").text) == [
        "fixed, lr 3e-4",
        "adaloss, lr 1e-3, rho 0.9 / adaloss, lr 2e-3, rho 0.8",
    ]
    best = _trace(fig, "best (rank 1)")
    assert list(best.x) == [5.0, 5.0] and list(best.marker.symbol) == ["star", "star"]
    pareto_png(table, [MRE], "one", tmp_path / "pareto_1d_cost.png", searched=SEARCHED)
    assert drawn[-1]["xlabel"][0] == "cost/gflops (min, ← better)"
    assert "best for its cost/gflops" in drawn[-1]["legend"] and "stopped early (ASHA)" in drawn[-1]["legend"]
    # every trial has the same GFLOPs: the epoch time is the cost that differs
    table["cost/gflops"] = 5.0
    table["cost/epoch_s"] = [30.0, 31.0, 12.0, 40.0, 15.0, 50.0, 9.0]
    assert pareto_figure(table, [MRE], SEARCHED, "one").layout.xaxis.title.text == "cost/epoch_s (min, ← better)"
    assert "cost/epoch_s: 12" in _readable(pareto_html(table, [MRE], SEARCHED, "one"))  # and in the hover
    # the objective is itself the cost: no second cost axis
    assert pareto_figure(table, [GF], SEARCHED, "gf").layout.xaxis.title.text == "cost/epoch_s (min, ← better)"
    assert (
        pareto_figure(table.drop(columns=["cost/epoch_s"]), [GF], SEARCHED, "gf").layout.xaxis.title.text
        == "trials, best first"
    )


# ------------------------------------------------------------------------------------------------ σ


def _sigma(k: int, epochs: int = 30) -> pd.DataFrame:
    t = np.arange(1, epochs + 1)[:, None]
    start = 8.0 + (np.arange(k)[None, :] % 7)
    return pd.DataFrame(start * np.exp(-t / (10 + np.arange(k)[None, :] % 5)) + 1.5, index=t[:, 0], columns=range(k))


@pytest.mark.parametrize(
    "k,groups", [(3, None), (3, {"left": [0, 1], "right": [2]}), (68, None), (68, FACE68_REGIONS), (1, None)]
)
def test_sigma_png(tmp_path, k, groups):
    name = f"sigma_k{k}{'_groups' if groups else ''}.png"
    _png(sigma_png(_sigma(k), tmp_path / name, "trial a1a1a1a1: adaloss σ", groups=groups), SIGMA_PNG_SIZE)


def test_sigma_png_single_epoch_and_empty(tmp_path):
    _png(sigma_png(_sigma(4, epochs=1), tmp_path / "one.png", "one epoch"), SIGMA_PNG_SIZE)
    _png(sigma_png(pd.DataFrame(), tmp_path / "empty.png", "nothing yet"), SIGMA_PNG_SIZE)


def _lab(rgb) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65), by the textbook formulas."""
    c = np.asarray(rgb, dtype=float)
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


MIN_DELTA_E = 15.0  # CIE76; about 2.3 is just noticeable. tab20's closest pair, light blue and light purple, is 16.6


def test_sigma_colours_are_pairwise_distinct():
    assert np.linalg.norm(_lab((1, 1, 1)) - _lab((0, 0, 0))) == pytest.approx(100, abs=0.01)  # L* 100 vs 0
    for k in (1, 10, 19, 20, 37, 68, 80):
        styles = landmark_styles(k)
        assert len(set(styles)) == k  # no two landmarks share both colour and line style
        for (c1, s1), (c2, s2) in itertools.combinations(styles, 2):
            if s1 == s2:
                assert np.linalg.norm(_lab(c1) - _lab(c2)) >= MIN_DELTA_E, (k, c1, c2)
    assert [s for _, s in landmark_styles(41)[18:41:2]] == [
        "-",
        "--",
        "--",
        "--",
        "--",
        "--",
        "--",
        "--",
        "--",
        "--",
        "--",
        ":",
    ]


def test_sigma_legend_names_the_isbi_landmarks(tmp_path, drawn):
    names = landmark_names("isbi2015", 19)  # the challenge's L1-L19, in annotation order
    assert (len(names), names[0], names[4], names[9], names[14], names[18]) == (
        19,
        "sella",
        "subspinale",
        "gonion",
        "subnasale",
        "articulare",
    )
    sigma_png(_sigma(19), tmp_path / "sigma_isbi_names.png", "ISBI 2015: adaloss σ", names=names)
    assert drawn[-1]["legend"] == [f"{k} {n}" for k, n in enumerate(names)]
    sigma_png(_sigma(37), tmp_path / "sigma_k37.png", "hand: 37 landmarks", names=landmark_names("hand", 37))
    assert drawn[-1]["legend"] == [f"landmark {k}" for k in range(37)]
    assert landmark_names("phantom", 19)[0] == "sella" and landmark_names("300w", 68) is None
    assert landmark_names("isbi2015", 20) is None and landmark_names(None, 3) is None


def test_face68_regions_cover_the_68_points_once():
    ks = sorted(k for idx in FACE68_REGIONS.values() for k in idx)
    assert ks == list(range(68))
    assert FACE68_REGIONS["eyes"][0] == 36 and FACE68_REGIONS["eyes"][-1] == 47


# ---------------------------------------------------------------------------------------------- CED


def test_ced_summary_by_hand():
    errors = np.array([[1.0, 3.0, NAN], [2.0, NAN, NAN], [NAN, NAN, NAN]])
    # mm, T = 2: errors 1, 3, 2 -> AUC = mean(max(0, 2 - e)) / 2 = mean(1, 0, 0) / 2 = 1/6; mean = 2
    s = ced_summary(errors, "mm", 2.0)
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.0) and s["auc"] == pytest.approx(1 / 6)
    # nme, T = 4: per-image means 2, 2 (the all-NaN row left out) -> AUC = mean(2, 2) / 4 = 0.5
    s = ced_summary(errors, "nme", 4.0)
    assert s["n"] == 2 and s["mean"] == pytest.approx(2.0) and s["auc"] == pytest.approx(0.5)
    s = ced_summary(np.full((2, 3), NAN), "mm", 2.0)
    assert s["n"] == 0 and math.isnan(s["auc"]) and math.isnan(s["mean"])
    with pytest.raises(ValueError, match="unit"):
        ced_summary(errors, "px", 2.0)


@pytest.mark.parametrize("unit,threshold", [("mm", 2.0), ("nme", 8.0)])
def test_ced_png(tmp_path, unit, threshold):
    rng = np.random.default_rng(0)
    errors = rng.gamma(2.0, threshold / 3, size=(40, 19))
    errors[3, 5] = NAN
    errors[7] = NAN
    _png(ced_png(errors, unit, threshold, tmp_path / f"ced_{unit}.png", f"ced {unit}"), CED_PNG_SIZE)


def test_ced_png_edge_cases(tmp_path):
    _png(ced_png(np.full((3, 4), NAN), "mm", 2.0, tmp_path / "nan.png", "all NaN"), CED_PNG_SIZE)
    _png(ced_png(np.array([[1.2], [0.4]]), "nme", 8.0, tmp_path / "k1.png", "K = 1"), CED_PNG_SIZE)
    _png(ced_png(np.array([[100.0, 200.0]]), "mm", 2.0, tmp_path / "far.png", "far tail"), CED_PNG_SIZE)


# ------------------------------------------------------------------------------------- image panels


def test_overlay_png_size_formula():
    assert overlay_png_size(1, 100, 100) == (620, 64 + 300 + 28)  # one panel, centred in the minimum width
    assert overlay_png_size(2, 50, 100) == (620, 64 + 150 + 28)
    assert overlay_png_size(4, 200, 100) == (4 * 300 + 3 * 8, 64 + 600 + 28)
    assert overlay_png_size(5, 100, 200) == (3 * 300 + 2 * 8, 64 + 2 * (150 + 28))  # 2 rows of 3
    assert overlay_png_size(8, 2400, 1935) == (4 * 300 + 3 * 8, 64 + 2 * (372 + 28))  # ISBI: round(300·2400/1935)


def _panel_px(x, y, n, col=0, row=0, H=100, W=100):
    """Where input pixel coordinate (x, y) of image (row, col) of n lands in the output PNG, pixel j
    spanning [j - 0.5, j + 0.5]. Panels are 300 px wide, 8 apart, centred in the picture's width."""
    scale = 300 / W
    ph = round(300 * H / W)
    cols = n if n <= 4 else math.ceil(n / 2)
    left = (overlay_png_size(n, H, W)[0] - (300 * cols + OVERLAY_GAP_PX * (cols - 1))) // 2
    top = OVERLAY_HEADER_PX + row * (ph + OVERLAY_TITLE_PX) + OVERLAY_TITLE_PX
    return left + col * (300 + OVERLAY_GAP_PX) + (x + 0.5) * scale, top + (y + 0.5) * scale


def test_overlays_put_markers_on_the_landmarks(tmp_path):
    # Black 100×100 images, shown at 3 output px per input px. One prediction at (25, 70), its ground
    # truth at (60, 20); a second landmark is missing (NaN) in both.
    images = np.zeros((2, 100, 100), np.uint8)
    gt = np.array([[[60.0, 20.0], [NAN, NAN]]] * 2)
    pred = np.array([[[25.0, 70.0], [NAN, NAN]]] * 2)
    errors = np.array([[2.0, NAN], [4.0, 1.0]])
    rgb = _png(
        overlays_png(images, gt, pred, tmp_path / "overlays_markers.png", "markers", errors=errors),
        overlay_png_size(2, 100, 100),
    ).astype(int)

    def red(x, y):
        patch = rgb[round(y) - 1 : round(y) + 2, round(x) - 1 : round(x) + 2]
        return ((patch[..., 0] > 150) & (patch[..., 1] < 90) & (patch[..., 2] < 90)).any()

    for col in (0, 1):
        assert red(*_panel_px(25, 70, 2, col))  # the cross's centre
        assert not red(*_panel_px(25, 100 - 70, 2, col))  # not flipped vertically
        assert not red(*_panel_px(70, 25, 2, col))  # nor transposed
        gx, gy = _panel_px(60, 20, 2, col)
        ring = rgb[round(gy) - 12 : round(gy) + 13, round(gx) - 12 : round(gx) + 13]
        assert ((ring[..., 1] > 150) & (ring[..., 0] < 100)).any()  # a green circle around the gt
        assert not ((rgb[round(gy), round(gx), 1] > 150) and (rgb[round(gy), round(gx), 0] < 100))  # hollow


@pytest.mark.parametrize("n,k,shape", [(1, 1, (64, 48)), (3, 19, (120, 100)), (6, 68, (80, 80)), (8, 5, (50, 90))])
def test_overlays_png_sizes(tmp_path, n, k, shape):
    rng = np.random.default_rng(n)
    H, W = shape
    images = rng.integers(0, 256, size=(n, H, W), dtype=np.uint8)
    gt = rng.uniform(0, [W - 1, H - 1], size=(n, k, 2))
    pred = gt + rng.normal(0, 2, size=gt.shape)
    gt[0, 0] = NAN
    errors = np.linalg.norm(pred - gt, axis=-1) * 0.1
    path = overlays_png(
        images, gt, pred, tmp_path / f"overlays_n{n}.png", f"{n} images", errors=errors, unit="mm" if n % 2 else "nme"
    )
    _png(path, overlay_png_size(n, H, W))


def test_overlays_with_nothing_annotated(tmp_path):
    # n = 1, K = 1, the one landmark missing in gt and its error NaN: the panel says so, nothing crashes.
    path = overlays_png(
        np.full((1, 40, 30), 90, np.uint8),
        np.full((1, 1, 2), NAN),
        np.array([[[10.0, 20.0]]]),
        tmp_path / "overlays_missing.png",
        "missing",
        errors=np.full((1, 1), NAN),
    )
    _png(path, overlay_png_size(1, 40, 30))
    with pytest.raises(ValueError, match="unit 'px'"):
        overlays_png(
            np.zeros((1, 8, 8), np.uint8), np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), tmp_path / "x.png", "", unit="px"
        )


def test_overlays_reject_too_many_images(tmp_path):
    with pytest.raises(ValueError, match="at most 8 images, got 9"):
        overlays_png(np.zeros((9, 8, 8), np.uint8), np.zeros((9, 1, 2)), np.zeros((9, 1, 2)), tmp_path / "x.png", "")


def test_heatmap_pixel_lands_at_its_stride_centre(tmp_path):
    # Stride 4: heatmap pixel (u, v) = (3, 10) is centred at input ((3 + .5)·4 - .5, (10 + .5)·4 - .5)
    # = (13.5, 41.5). On a black image, the bright blob's centroid must be there.
    images = np.zeros((1, 100, 100), np.uint8)
    hm = np.zeros((1, 25, 25))
    hm[0, 10, 3] = 1.0
    rgb = _png(
        heatmaps_png(images, hm, 4, tmp_path / "heatmap_dot.png", "one hot pixel"), overlay_png_size(1, 100, 100)
    ).astype(float)
    top = OVERLAY_HEADER_PX + OVERLAY_TITLE_PX  # below the titles: only the panel and white margins
    below = rgb[top:].sum(-1)
    bright = (below > 150) & (below < 3 * 250)  # the blob, not the white margins
    ys, xs = np.mgrid[top : rgb.shape[0], 0 : rgb.shape[1]] + 0.5  # output pixel centres
    w = np.where(bright, below, 0.0)
    cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
    ex, ey = _panel_px(13.5, 41.5, 1)
    assert bright.sum() > 20
    assert abs(cx - ex) < 1.5 and abs(cy - ey) < 1.5


@pytest.mark.parametrize("n", [1, 5])
def test_heatmaps_png(tmp_path, n):
    H, W, s = 96, 80, 4
    yy, xx = np.mgrid[0 : H // s, 0 : W // s]
    hm = np.stack([np.exp(-((xx - 5 - i) ** 2 + (yy - 8) ** 2) / 4.0) for i in range(n)])
    images = np.tile(np.linspace(0, 255, W, dtype=np.uint8)[None, None, :], (n, H, 1))
    _png(heatmaps_png(images, hm, s, tmp_path / f"heatmaps_n{n}.png", "val heatmaps"), overlay_png_size(n, H, W))


# --------------------------------------------------------------------------------------- importance


def test_importance_png_size_formula():
    assert importance_png_size(0) == (800, 200)
    assert importance_png_size(3) == (800, 200 + 40 * 3)
    assert importance_png_size(30) == importance_png_size(45) == (800, 1400)


@pytest.mark.parametrize("n", [0, 1, 4, 45])
def test_importance_png(tmp_path, n):
    names = ["optim.lr", "target.schedule", "target.adaloss.rho", "model.backbone.pretrained_weights"]
    imp = {(names[i] if i < len(names) else f"space.param_{i}"): 1.0 / (i + 1) for i in range(n)}
    _png(importance_png(imp, tmp_path / f"importance_{n}.png", "farnet importances"), importance_png_size(n))


# ------------------------------------------------------------------------------ Pareto with repeats


def _repeats():
    """Configurations of 2-3 repeats (dashboards.effects.per_configuration), val/mre_mm and cost/gflops min.
    A 2.0, 2.2, 2.4 at 5 GFLOPs: mean 2.2, sd 0.2, half 4.303 · 0.2 / √3 = 0.49687: [1.70313, 2.69687].
    B 3.0, 3.1 (+ a failed repeat) at 2 GFLOPs: 3.05, half 12.706 · 0.070711 / √2 = 0.6353: [2.4147, 3.6853].
    A and B are the front. C 2.5, 2.6, 2.7 at 6: sd 0.1, half 4.303 · 0.1 / √3 = 0.24843: [2.35157, 2.84843],
    dominated by A on the means but not beyond the intervals (A's worse end 2.69687 > C's better end 2.35157):
    marked. D 4.0, 4.2, 4.4 at 6:
    [3.70313, 4.69687]: A beats it beyond both intervals (2.69687 < 3.70313, 5 < 6): not marked."""
    from dashboards.effects import per_configuration

    rows = []
    for cid, values, gf, schedule in (
        ("A", [2.0, 2.2, 2.4], 5.0, "adaloss"),
        ("B", [3.0, 3.1, NAN], 2.0, "fixed"),
        ("C", [2.5, 2.6, 2.7], 6.0, "adaloss"),
        ("D", [4.0, 4.2, 4.4], 6.0, "fixed"),
    ):
        for k, v in enumerate(values):
            rows.append(
                {
                    "trial": f"{cid}{k}",
                    "config.id": cid,
                    "config.repeat": k,
                    "status": "failed" if math.isnan(v) else "finished",
                    "val/mre_mm": v,
                    "cost/gflops": gf,
                    "optim.lr": 1e-3,
                    "target.schedule": schedule,
                    "target.adaloss.rho": None,
                }
            )
    return per_configuration(pd.DataFrame(rows), [MRE, GF], SEARCHED)


def test_pareto_with_repeats_draws_intervals_and_marks_what_overlaps_the_front(tmp_path, drawn):
    from dashboards.ranking import rank_table

    configs = _repeats()
    fig = pareto_figure(configs, [MRE, GF], SEARCHED, "repeats")
    traces = {t.name: t for t in fig.data}
    front = traces["front (rank 1)"]
    assert sorted(front.text[i].split("config.id ")[1][0] for i in range(2)) == ["A", "B"]
    i = [t.split("config.id ")[1][0] for t in front.text].index("A")
    # x = val/mre_mm: 2.2 - 1.70313 below, 2.69687 - 2.2 above; y = cost/gflops has no spread: 0
    assert front.error_x.arrayminus[i] == pytest.approx(0.49687, abs=2e-3)
    assert front.error_x.array[i] == pytest.approx(0.49687, abs=2e-3)
    assert front.error_y.array[i] == pytest.approx(0.0)
    overlap = traces[OVERLAP_NAME]
    assert len(overlap.x) == 1 and "config.id C" in overlap.text[0] and "cost/gflops: 6<br>" in overlap.text[0]
    assert len(traces["other ranks"].x) == 1 and "config.id D" in traces["other ranks"].text[0]
    assert "val/mre_mm: 2.6 [2.352, 2.848] (95 % CI)" in overlap.text[0] and "repeats.n: 3" in overlap.text[0]
    assert "repeats.failed: 1" in front.text[[t.split("config.id ")[1][0] for t in front.text].index("B")]
    html = _readable(pareto_html(configs, [MRE, GF], SEARCHED, "repeats"))
    assert "4 configurations ranked, front of 2 on the means (bars: 95 % intervals), 1 overlapping it" in html
    _png(
        pareto_png(configs, [MRE, GF], "repeats", tmp_path / "pareto_repeats.png", searched=SEARCHED),
        pareto_png_size(2),
    )
    _png(
        pareto_png(
            rank_table(configs, [MRE]), [MRE], "repeats 1d", tmp_path / "pareto_repeats_1d.png", searched=SEARCHED
        ),
        pareto_png_size(1),
    )
    assert OVERLAP_NAME in drawn[0]["legend"] and OVERLAP_NAME in drawn[1]["legend"]
    # one objective (ranked on it alone): A is best; C's 2.35157 and B's 2.4147 are below A's 2.69687: both
    # marked; D's 3.70313 is not
    one = {t.name: t for t in pareto_figure(rank_table(configs, [MRE]), [MRE], SEARCHED, "1d").data}
    assert sorted(t.split("config.id ")[1][0] for t in one[OVERLAP_NAME].text) == ["B", "C"]


def test_pareto_with_one_repeat_each_looks_as_before():
    from dashboards.effects import per_configuration

    table = _table()
    configs = per_configuration(table, [MRE, GF], SEARCHED)
    fig = pareto_figure(configs, [MRE, GF], SEARCHED, "t")
    assert all(
        t.error_x.array is None and t.error_y.array is None for t in fig.data if isinstance(t, type(fig.data[0]))
    )
    assert OVERLAP_NAME not in {t.name for t in fig.data}
    before = {t.name: sorted(map(str, t.x)) for t in pareto_figure(table, [MRE, GF], SEARCHED, "t").data}
    assert {t.name: sorted(map(str, t.x)) for t in fig.data} == before
    html = _readable(pareto_html(configs, [MRE, GF], SEARCHED, "t"))
    assert "6 trials ranked, front of 3; 1 unranked: 1 diverged" in html and "trial a1a1a1a1" in html
    assert "95 % CI" not in html and "repeats.n" not in html
