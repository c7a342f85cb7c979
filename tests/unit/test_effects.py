"""Configurations and recipe effects against hand-computed means, standard deviations and t intervals.

t quantiles from a printed table: t_{0.975,1} = 12.706, t_{0.975,2} = 4.303, t_{0.975,4} = 2.776."""

import math

import pandas as pd
import pytest

from dashboards.effects import (
    configurations_text,
    mean_ci,
    overlaps_front,
    per_configuration,
    recipe_effects,
    recipes_markdown,
    recipes_text,
)

MRE, GF, SDR = ("val/mre_mm", "min"), ("cost/gflops", "min"), ("val/sdr_2mm", "max")
NAN = float("nan")
T1, T2, T4 = 12.706, 4.303, 2.776


def _runs(*configs) -> pd.DataFrame:
    """configs: (config.id, params dict, [(status, mre), ...] in repeat order, gflops) -> a trial table."""
    rows = []
    for cid, params, repeats, gflops in configs:
        for k, (status, mre) in enumerate(repeats):
            rows.append(
                {
                    "trial": f"{cid}_{k}",
                    "status": status,
                    "config.id": cid,
                    "config.repeat": k,
                    "val/mre_mm": mre,
                    "cost/gflops": gflops,
                    **params,
                }
            )
    return pd.DataFrame(rows)


def approx(v):
    return pytest.approx(v, abs=2e-3)


def _mixed() -> pd.DataFrame:
    return _runs(
        ("a", {"target.schedule": "adaloss"}, [("finished", 4.0), ("finished", 4.2), ("stopped early", 4.4)], 1.0),
        ("b", {"target.schedule": "fixed"}, [("finished", 12.0), ("finished", 11.0), ("failed", NAN)], 0.5),
        ("c", {"target.schedule": "fixed"}, [("finished", 5.0), ("diverged", NAN)], 2.0),
        ("d", {"target.schedule": "adaloss"}, [("failed", NAN), ("failed", NAN)], 1.0),
        ("e", {"target.schedule": "adaloss"}, [("running", NAN)], 1.0),
    )


def test_mean_ci_by_hand():
    # 4.0, 4.2, 4.4: mean 4.2, sd √((0.04 + 0 + 0.04) / 2) = 0.2, half 4.303 · 0.2 / √3 = 0.49687
    mean, sd, lo, hi = mean_ci([4.0, 4.2, 4.4])
    assert (mean, sd, lo, hi) == (approx(4.2), approx(0.2), approx(3.70313), approx(4.69687))
    assert all(math.isnan(x) for x in mean_ci([5.0])[1:]) and mean_ci([5.0])[0] == 5.0


def test_per_configuration_means_intervals_failed_and_diverged_repeats():
    configs = per_configuration(_mixed(), [MRE, GF], ["target.schedule"]).set_index("config.id")
    a, b, c, d, e = (configs.loc[k] for k in "abcde")
    # a: mean 4.2, sd 0.2, [3.70313, 4.69687]; a stopped-early repeat has values and counts
    assert (a["val/mre_mm"], a["val/mre_mm.std"], a["val/mre_mm.ci_low"], a["val/mre_mm.ci_high"]) == (
        approx(4.2),
        approx(0.2),
        approx(3.70313),
        approx(4.69687),
    )
    assert (a["repeats.n"], a["repeats.failed"], a["status"]) == (3, 0, "finished")
    # b: 12, 11 and a failed repeat: mean 11.5, sd √(0.25 + 0.25) = 0.70711, half 12.706 · 0.70711 / √2 = 6.353
    assert (b["val/mre_mm"], b["val/mre_mm.std"], b["val/mre_mm.ci_low"], b["val/mre_mm.ci_high"]) == (
        approx(11.5),
        approx(0.70711),
        approx(5.147),
        approx(17.853),
    )
    assert (b["repeats.n"], b["repeats.failed"]) == (2, 1)
    # c: 5.0 and a diverged repeat: n = 1, no sd, no interval
    assert (c["val/mre_mm"], c["repeats.n"], c["repeats.failed"]) == (5.0, 1, 1)
    assert math.isnan(c["val/mre_mm.std"]) and math.isnan(c["val/mre_mm.ci_low"])
    # d: every repeat failed; e: still running: no values, unranked
    assert (d["repeats.n"], d["repeats.failed"], d["status"]) == (0, 2, "failed")
    assert (e["repeats.n"], e["status"]) == (0, "running")
    assert pd.isna(d["pareto.rank"]) and pd.isna(e["pareto.rank"])
    # ranks on the means: a (4.2, 1.0) and b (11.5, 0.5) are non-dominated; a dominates c (5.0, 2.0)
    assert (a["pareto.rank"], b["pareto.rank"], c["pareto.rank"]) == (1, 1, 2)
    assert a["trials"] == "a_0, a_1, a_2" and a["cost/gflops"] == 1.0
    text = configurations_text(configs.reset_index(), [MRE, GF], ["target.schedule"])
    assert "4.2 ± 0.5 (n = 3)" in text and "5 (n = 1)" in text


def test_without_config_tags_each_run_is_its_own_configuration():
    # a store from before repeats: no config.id column; one configuration per run, n = 1, as the trial table
    runs = _mixed().drop(columns=["config.id", "config.repeat"])
    configs = per_configuration(runs, [MRE], ["target.schedule"])
    assert len(configs) == len(runs) and set(configs["config.id"]) == set(runs["trial"])
    row = configs.set_index("config.id").loc["a_1"]
    assert (row["val/mre_mm"], row["repeats.n"], row["status"]) == (4.2, 1, "finished")
    assert configs.loc[0, "config.id"] == "a_0" and configs.loc[0, "pareto.rank"] == 1  # 4.0 is best


def test_overlaps_front():
    configs = per_configuration(_mixed(), [MRE], ["target.schedule"])
    # front: a, [3.70313, 4.69687]; c = 5.0 (n = 1, a point) is outside; b [5.147, 17.853] is outside
    assert not overlaps_front(configs, [MRE]).any()
    runs = _runs(
        ("a", {}, [("finished", 4.0), ("finished", 4.2), ("finished", 4.4)], 1.0),
        ("f", {}, [("finished", 4.5), ("finished", 4.6)], 1.0),
    )
    configs = per_configuration(runs, [MRE], [])
    # f: mean 4.55, sd 0.070711, half 12.706 · 0.05 = 0.6353: [3.9147, 5.1853] meets a's interval
    assert overlaps_front(configs, [MRE]).tolist() == [False, True]


def _effects(runs, objectives=(MRE,), searched=("target.schedule", "optim.lr")):
    table = recipe_effects(runs, list(objectives), list(searched), ["target.schedule"])
    return table.set_index("value")


def test_welch_unequal_n_and_a_failed_repeat():
    # adaloss a: 4.0, 4.2, 4.4 (mean 4.2, s² = 0.04, n 3); fixed b: 11, 11 and a failed repeat (s² = 0, n 2)
    # se = √(0.04/3 + 0) = 0.11547; ν = (0.04/3)² / ((0.04/3)² / 2 + 0) = 2; half = 4.303 · 0.11547 = 0.49687
    # diff = 4.2 - 11 = -6.8: [-7.29687, -6.30313], lower MRE: better; fixed gets the mirror image
    runs = _runs(
        (
            "a",
            {"target.schedule": "adaloss", "optim.lr": 1e-3},
            [("finished", 4.0), ("finished", 4.2), ("finished", 4.4)],
            1.0,
        ),
        (
            "b",
            {"target.schedule": "fixed", "optim.lr": 1e-2},
            [("finished", 11.0), ("finished", 11.0), ("failed", NAN)],
            1.0,
        ),
    )
    t = _effects(runs)  # another lr: not a matched pair
    assert list(t.index) == ["adaloss", "fixed"]  # best value first
    ada, fix = t.loc["adaloss"], t.loc["fixed"]
    assert (ada["method"], ada["vs"], ada["vs.config.id"], ada["config.id"]) == ("Welch t", "fixed", "b", "a")
    assert (ada["diff"], ada["diff.ci_low"], ada["diff.ci_high"]) == (approx(-6.8), approx(-7.29687), approx(-6.30313))
    assert ada["verdict"] == "better" and fix["verdict"] == "worse"
    assert (fix["diff"], fix["diff.ci_low"], fix["diff.ci_high"]) == (approx(6.8), approx(6.30313), approx(7.29687))
    assert (fix["repeats.n"], fix["repeats.failed"]) == (2, 1)
    assert (ada["val/mre_mm"], ada["val/mre_mm.ci_low"], ada["repeats.n"]) == (approx(4.2), approx(3.70313), 3)


def test_welch_when_other_params_differ_equal_n_no_clear_difference_and_max_mode():
    # adaloss 4.0, 4.2, 4.4 at lr 1e-3; fixed 4.1, 4.3, 4.5 at lr 1e-2 (other params differ: Welch)
    # s² = 0.04 each: se = √(2 · 0.04/3) = 0.163299, ν = (0.026667)² / (2 · 0.013333² / 2) = 4
    # half = 2.776 · 0.163299 = 0.45332; diff -0.1: [-0.55332, 0.35332] contains 0
    runs = _runs(
        (
            "a",
            {"target.schedule": "adaloss", "optim.lr": 1e-3},
            [("finished", 4.0), ("finished", 4.2), ("finished", 4.4)],
            1.0,
        ),
        (
            "b",
            {"target.schedule": "fixed", "optim.lr": 1e-2},
            [("finished", 4.1), ("finished", 4.3), ("finished", 4.5)],
            1.0,
        ),
    )
    ada = _effects(runs).loc["adaloss"]
    assert (ada["diff"], ada["diff.ci_low"], ada["diff.ci_high"]) == (approx(-0.1), approx(-0.55332), approx(0.35332))
    assert (ada["method"], ada["verdict"]) == ("Welch t", "no clear difference at n = 3")
    # the same sample, as SDR to maximise, 80, 82, 84 vs 70, 72, 74: s² = 4 each, se = √(8/3) = 1.63299,
    # ν = 4, half = 2.776 · 1.63299 = 4.5332; diff +10: [5.4668, 14.5332], higher SDR: better
    runs["val/sdr_2mm"] = [80.0, 82.0, 84.0, 70.0, 72.0, 74.0]
    t = _effects(runs, objectives=(SDR, MRE))
    assert list(t.index) == ["adaloss", "fixed"]
    ada = t.loc["adaloss"]
    assert (ada["diff"], ada["diff.ci_low"], ada["diff.ci_high"]) == (approx(10), approx(5.4668), approx(14.5332))
    assert ada["verdict"] == "better" and t.loc["fixed", "verdict"] == "worse"


def _grid(diverged: bool = False) -> pd.DataFrame:
    ada1 = [("finished", 4.0), ("finished", 4.5), ("diverged", NAN) if diverged else ("finished", 5.0)]
    return _runs(
        ("a1", {"target.schedule": "adaloss", "optim.lr": 1e-3}, ada1, 1.0),
        (
            "f1",
            {"target.schedule": "fixed", "optim.lr": 1e-3},
            [("finished", 4.3), ("finished", 4.9), ("finished", 5.2)],
            1.0,
        ),
        (
            "a2",
            {"target.schedule": "adaloss", "optim.lr": 1e-2},
            [("finished", 6.0), ("finished", 6.1), ("finished", 6.2)],
            1.0,
        ),
        (
            "f2",
            {"target.schedule": "fixed", "optim.lr": 1e-2},
            [("finished", 7.0), ("finished", 7.2), ("finished", 7.4)],
            1.0,
        ),
    )


def test_paired_on_a_grid_with_repeats():
    # best adaloss a1 (mean 4.5) vs best fixed f1 (mean 4.8), same lr, same seeds (repeats 0, 1, 2):
    # d = 4.0-4.3, 4.5-4.9, 5.0-5.2 = -0.3, -0.4, -0.2: mean -0.3, sd √((0 + 0.01 + 0.01) / 2) = 0.1
    # half = 4.303 · 0.1 / √3 = 0.248434: [-0.548434, -0.051566] below 0: better (Welch would not see it:
    # sd 0.5 and 0.458 give half ≈ 1.1)
    t = _effects(_grid())
    ada, fix = t.loc["adaloss"], t.loc["fixed"]
    assert (ada["config.id"], ada["vs.config.id"], ada["method"]) == ("a1", "f1", "paired t")
    assert (ada["diff"], ada["diff.ci_low"], ada["diff.ci_high"]) == (
        approx(-0.3),
        approx(-0.548434),
        approx(-0.051566),
    )
    assert (ada["verdict"], fix["verdict"]) == ("better", "worse")
    assert ada["configurations"] == 2


def test_paired_with_a_diverged_repeat_uses_the_matched_pairs_left():
    # a1's repeat 2 diverged: pairs 0 and 1, d = -0.3, -0.4: mean -0.35, sd √(0.0025 + 0.0025) = 0.070711,
    # half = 12.706 · 0.070711 / √2 = 0.6353: [-0.9853, 0.2853]
    t = _effects(_grid(diverged=True))
    ada = t.loc["adaloss"]
    assert (ada["val/mre_mm"], ada["repeats.n"], ada["repeats.failed"]) == (approx(4.25), 2, 1)
    assert (ada["diff"], ada["diff.ci_low"], ada["diff.ci_high"]) == (approx(-0.35), approx(-0.9853), approx(0.2853))
    assert (ada["method"], ada["verdict"]) == ("paired t", "no clear difference at n = 2 pairs")


def test_ties():
    # two adaloss configurations with the same mean 4.2: the one with more repeats (y, n 3) is its best;
    # fixed z has the same values at another lr: diff 0, Welch half 2.776 · 0.163299 = 0.45332
    runs = _runs(
        ("x", {"target.schedule": "adaloss", "optim.lr": 1e-1}, [("finished", 4.2)], 1.0),
        (
            "y",
            {"target.schedule": "adaloss", "optim.lr": 1e-3},
            [("finished", 4.0), ("finished", 4.2), ("finished", 4.4)],
            1.0,
        ),
        (
            "z",
            {"target.schedule": "fixed", "optim.lr": 1e-2},
            [("finished", 4.0), ("finished", 4.2), ("finished", 4.4)],
            1.0,
        ),
    )
    t = _effects(runs)
    ada, fix = t.loc["adaloss"], t.loc["fixed"]
    assert (ada["config.id"], ada["configurations"], ada["vs.config.id"]) == ("y", 2, "z")
    assert (ada["diff"], ada["diff.ci_low"], ada["diff.ci_high"]) == (approx(0), approx(-0.45332), approx(0.45332))
    assert ada["verdict"] == fix["verdict"] == "no clear difference at n = 3"


def test_n_1_a_value_without_results_and_a_lone_value():
    # the quickstart's picture: one run each. fixed 12.1 vs adaloss 4.0: diff -8.1, no interval
    runs = _runs(
        ("a", {"target.schedule": "adaloss", "loss.type": "mse"}, [("finished", 4.0)], 1.0),
        ("b", {"target.schedule": "fixed", "loss.type": "mse"}, [("finished", 12.1)], 1.0),
        ("c", {"target.schedule": "fixed", "loss.type": "awing"}, [("failed", NAN), ("diverged", NAN)], 1.0),
    )
    t = recipe_effects(runs, [MRE], ["target.schedule", "loss.type"], ["target.schedule", "loss.type"])
    sched = t[t["param"] == "target.schedule"].set_index("value")
    assert (sched.loc["adaloss", "diff"], sched.loc["adaloss", "verdict"]) == (approx(-8.1), "unclear (n = 1)")
    assert math.isnan(sched.loc["adaloss", "diff.ci_low"]) and sched.loc["adaloss", "method"] == ""
    loss = t[t["param"] == "loss.type"].set_index("value")
    assert loss.loc["mse", "verdict"] == "no other value" and loss.loc["mse", "config.id"] == "a"
    assert (loss.loc["awing", "verdict"], loss.loc["awing", "repeats.failed"], loss.loc["awing", "repeats.n"]) == (
        "no finished configuration",
        2,
        0,
    )
    assert list(loss.index) == ["mse", "awing"]
    text = recipes_text(t, [MRE])
    assert "unclear (n = 1)" in text and "no finished configuration" in text and "-8.1" in text
    md = recipes_markdown(t, [MRE], "study q")
    assert md.count("\n| target.schedule |") == 2 and "| awing |" in md
