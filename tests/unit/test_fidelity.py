"""The fidelity report's claim rows against hand-computed paired and Welch t intervals, its verdict
rule, and the teacher's pose classes. t_{0.975,2} = 4.303 (a printed table)."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from dashboards.effects import per_configuration
from dashboards.fidelity import HELD, METRIC, NOT_HELD, UNCLEAR, Claim, StudyData, compare, sigma_claim
from trainables.pretrain import CLASSES, pose_classes

T2 = 4.303


def _study(*configs, searched=("target.schedule", "optim.lr"), runs=()) -> StudyData:
    """configs: (config.id, params, [(status, test mre) per repeat]) -> StudyData as load_study builds it."""
    rows = [
        {"trial": f"{cid}_{k}", "status": status, "config.id": cid, "config.repeat": k, METRIC: v, **params}
        for cid, params, repeats in configs
        for k, (status, v) in enumerate(repeats)
    ]
    trials = pd.DataFrame(rows)
    info = SimpleNamespace(space={p: None for p in searched})
    return StudyData(info, list(runs), trials, per_configuration(trials, [(METRIC, "min")], list(searched)))


ADA, FIX = {"target.schedule": "adaloss", "optim.lr": 1e-3}, {"target.schedule": "fixed", "optim.lr": 1e-3}
CLAIM = Claim("s", "src", "adaloss beats fixed", {"target.schedule": "adaloss"}, {"target.schedule": "fixed"}, "1 vs 2")


def test_paired_interval_by_hand_and_held():
    # d = (2-4, 3-5, 4-6.5) = (-2, -2, -2.5): mean -2.1667, sd √((1/36 + 1/36 + 4/36) / 2) = 0.28868,
    # half = 4.303 · 0.28868 / √3 = 0.71717 -> [-2.8838, -1.4495]: wholly below 0
    study = _study(
        ("a", ADA, [("finished", 2.0), ("finished", 3.0), ("finished", 4.0)]),
        ("f", FIX, [("finished", 4.0), ("finished", 5.0), ("finished", 6.5)]),
    )
    row = compare(study, CLAIM)
    assert row["method"] == "paired t" and row["n"] == "3 pairs"
    assert row["diff"] == pytest.approx(-2.16667, abs=1e-4)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(-2.8838, abs=1e-3), pytest.approx(-1.4495, abs=1e-3))
    assert row["verdict"] == HELD
    assert row["better"] == "3.00 ± 2.48 (n = 3)"  # sd 1, half 4.303/√3 = 2.484


def test_spanning_zero_is_unclear_and_the_other_way_not_held():
    # d = (-1, -2, -0.5): mean -1.1667, sd 0.76376, half 4.303 · 0.76376 / √3 = 1.8975 -> [-3.064, 0.731]
    study = _study(
        ("a", ADA, [("finished", 2.0), ("finished", 3.0), ("finished", 4.0)]),
        ("f", FIX, [("finished", 3.0), ("finished", 5.0), ("finished", 4.5)]),
    )
    row = compare(study, CLAIM)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(-3.064, abs=1e-3), pytest.approx(0.731, abs=1e-3))
    assert row["verdict"] == UNCLEAR
    flipped = compare(study, Claim("s", "src", "fixed beats adaloss", CLAIM.than, CLAIM.better, ""))
    assert flipped["verdict"] == UNCLEAR and flipped["diff"] == pytest.approx(1.16667, abs=1e-4)
    worse = _study(
        ("a", ADA, [("finished", 5.0), ("finished", 6.0), ("finished", 7.0)]),
        ("f", FIX, [("finished", 3.0), ("finished", 4.0), ("finished", 4.5)]),
    )
    assert compare(worse, CLAIM)["verdict"] == NOT_HELD


def test_welch_without_pairs_best_of_several_and_failed_sides():
    # fixed at two σ: the one with the lower mean (f2, 5 against 9.17) is the side compared.
    study = _study(
        ("a", ADA, [("finished", 2.0), ("failed", math.nan), ("finished", 4.0)]),
        ("f1", {**FIX, "target.sigma": 1.0}, [("finished", 9.0), ("finished", 9.5), ("finished", 9.0)]),
        ("f2", {**FIX, "target.sigma": 8.0}, [("finished", 4.0), ("finished", 5.0), ("finished", 6.0)]),
        searched=("target.schedule", "target.sigma", "optim.lr"),
    )
    row = compare(study, CLAIM)
    # repeats 0 and 2 are common to a and f2: paired, d = (2-4, 4-6) = (-2, -2), sd 0 -> [-2, -2]
    assert row["method"] == "paired t" and row["other"].startswith("5.00")
    assert (row["diff"], row["ci_low"], row["ci_high"]) == (-2.0, -2.0, -2.0) and row["verdict"] == HELD
    only = _study(
        ("a", ADA, [("finished", 2.0), ("failed", math.nan), ("failed", math.nan)]),
        ("f", FIX, [("failed", math.nan), ("finished", 4.0), ("finished", 5.0)]),
    )
    welch_row = compare(only, CLAIM)
    assert welch_row["method"] == "Welch t" and welch_row["verdict"] == UNCLEAR  # n = 1 on a side: no interval
    assert welch_row["why"] == "no interval with n < 2"
    dead = _study(
        ("a", ADA, [("finished", 2.0), ("finished", 3.0)]), ("f", FIX, [("diverged", math.nan), ("diverged", math.nan)])
    )
    assert compare(dead, CLAIM)["verdict"] == HELD and "other side failed" in compare(dead, CLAIM)["why"]
    assert compare(dead, Claim("s", "", "", CLAIM.than, CLAIM.better, ""))["verdict"] == NOT_HELD
    assert (
        "no configuration matches" in compare(dead, Claim("s", "", "", {"target.schedule": "x"}, CLAIM.than, ""))["why"]
    )


def _run(sigmas, lr=1e-3, spread=8.0, status="finished"):
    k = len(sigmas)
    params = {
        "target.schedule": "adaloss",
        "optim.lr": str(lr),
        "data.num_landmarks": str(k),
        "data.phantom.noise_spread": str(spread),
    }
    metrics = {f"target/sigma_{i}": s for i, s in enumerate(sigmas)}
    return SimpleNamespace(data=SimpleNamespace(params=params, metrics=metrics, tags={"trial.status": status}))


def test_sigma_claim_rank_correlation_by_hand():
    # run 1: σ rises with k -> ρ = 1; run 2: one swap among 4 -> ρ = 1 - 6·(1+1)/(4·15) = 0.8;
    # run 3: ρ = 1 - 6·(1+1+1+1)/60 = 0.6 (two swaps). mean 0.8, sd 0.2, half 4.303·0.2/√3 = 0.49687
    runs = [
        _run([1, 2, 3, 4]),
        _run([2, 1, 3, 4]),
        _run([2, 1, 4, 3]),
        _run([9, 9, 9, 1], lr=1e-4),
        _run([4, 3, 2, 1], status="failed"),
    ]
    row, table = sigma_claim(_study(runs=runs))
    assert row["diff"] == pytest.approx(0.8) and row["n"] == "3 runs"
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(0.30313, abs=1e-4), pytest.approx(1.29687, abs=1e-4))
    assert row["verdict"] == HELD
    assert list(table["sigma"]) == pytest.approx([5 / 3, 4 / 3, 10 / 3, 11 / 3])
    assert list(table["noise"]) == pytest.approx([1.0, 1 + 8 / 3, 1 + 16 / 3, 9.0])
    none, _ = sigma_claim(_study(runs=[_run([1, 2, 3], spread=0.0)]))
    assert none["verdict"] == UNCLEAR


def test_pose_classes_terciles_and_held_out_edges():
    # sella at 0, nasion at (cos a, sin a)·r: tilt a and length r each take 3 levels -> 9 balanced classes
    coords, expected = [], []
    for i, a in enumerate((-0.1, 0.0, 0.1)):
        for j, r in enumerate((10.0, 11.0, 12.0)):
            coords.append([[0.0, 0.0], [r * math.cos(a), r * math.sin(a)]])
            expected.append(3 * i + j)
    labels, edges = pose_classes(torch.tensor(coords))
    assert labels.tolist() == expected and int(labels.max()) < CLASSES
    held_out, _ = pose_classes(torch.tensor([[[0.0, 0.0], [100.0, 50.0]]]), edges)  # steep and long: class 8
    assert held_out.tolist() == [8]
