"""Pareto ranks against point sets worked out by hand: ties, duplicates, mixed min/max, 3 objectives."""

import numpy as np
import pandas as pd
import pytest

from dashboards.ranking import describe_excluded, pareto_ranks, rank_table
from study.schema import TAG_FRONT, TAG_RANK

NAN = float("nan")


def test_two_minimised_objectives_peel_into_fronts():
    #            A       B       C       D       E       F
    points = [(1, 5), (2, 3), (3, 1), (2, 4), (3, 3), (4, 4)]
    # A, B, C: nothing is better in one without being worse in the other.
    # D (2, 4) and E (3, 3) are dominated by B (2, 3) only; F (4, 4) by D and E as well.
    assert pareto_ranks(np.array(points), ["min", "min"]).tolist() == [1, 1, 1, 2, 2, 3]


def test_duplicates_share_a_rank_and_do_not_dominate_each_other():
    points = [(1, 1), (1, 1), (2, 2), (2, 2)]
    assert pareto_ranks(np.array(points), ["min", "min"]).tolist() == [1, 1, 2, 2]


def test_a_tie_in_one_objective_is_decided_by_the_other():
    # (1, 2) is no worse in x and better in y: it dominates (1, 3); (0, 9) is best in x alone.
    assert pareto_ranks(np.array([(1, 3), (1, 2), (0, 9)]), ["min", "min"]).tolist() == [2, 1, 1]


def test_mixed_min_and_max():
    # (SDR % max, GFLOPs min): (85, 12) is worse than (90, 10) in both; (80, 5) is the cheap one.
    points = [(90, 10), (80, 5), (85, 12)]
    assert pareto_ranks(np.array(points), ["max", "min"]).tolist() == [1, 1, 2]
    # flipping the modes flips the verdict: now (85, 12) beats (80, 5) in both
    assert pareto_ranks(np.array(points), ["min", "max"]).tolist() == [2, 1, 1]


def test_three_objectives():
    points = [(1, 2, 3), (2, 1, 3), (3, 3, 1), (2, 2, 3), (3, 3, 3)]
    # (2, 2, 3) is dominated by (1, 2, 3) and by (2, 1, 3); (3, 3, 3) by every other point,
    # (2, 2, 3) included, so it is alone on the third front.
    assert pareto_ranks(np.array(points), ["min"] * 3).tolist() == [1, 1, 1, 2, 3]


def test_a_non_finite_value_leaves_the_point_unranked_and_out_of_the_comparison():
    # (0, 0) would dominate everything, but its first value is missing.
    points = [(NAN, 0), (1, 1), (2, 2), (np.inf, 0)]
    assert pareto_ranks(np.array(points), ["min", "min"]).tolist() == [0, 1, 2, 0]


def test_one_objective_is_the_best_value_and_its_ties():
    assert pareto_ranks(np.array([[3.0], [1.0], [1.0], [2.0]]), ["min"]).tolist() == [3, 1, 1, 2]


def test_no_points():
    assert pareto_ranks(np.zeros((0, 2)), ["min", "min"]).tolist() == []


def test_rank_table_ranks_only_ended_trials_with_every_objective():
    table = pd.DataFrame(
        {
            "trial": list("abcdef"),
            "status": ["finished", "stopped early", "running", "finished", "failed", "diverged"],
            "val/mre_mm": [2.0, 3.0, 0.1, NAN, 0.1, NAN],
            "cost/gflops": [5.0, 1.0, 0.1, 1.0, 0.1, 1.0],
        }
    )
    ranked = rank_table(table, [("val/mre_mm", "min"), ("cost/gflops", "min")])
    assert ranked[TAG_RANK].tolist() == [1, 1, pd.NA, pd.NA, pd.NA, pd.NA]
    assert ranked[TAG_FRONT].tolist() == [True, True, None, None, None, None]
    # the running trial's (partial) values would have dominated both: they are not compared
    assert (
        describe_excluded(ranked, [("val/mre_mm", "min"), ("cost/gflops", "min")])
        == "4 unranked: 1 running, 1 missing val/mre_mm, 1 failed, 1 diverged"
    )


def test_rank_table_adds_an_objective_no_trial_reported():
    table = pd.DataFrame({"trial": ["a"], "status": ["finished"], "val/mre_mm": [1.0]})
    ranked = rank_table(table, [("val/mre_mm", "min"), ("val/sdr_2mm", "max")])
    assert ranked[TAG_RANK].isna().all()
    assert (
        describe_excluded(ranked, [("val/mre_mm", "min"), ("val/sdr_2mm", "max")])
        == "1 unranked: 1 missing val/sdr_2mm"
    )


@pytest.mark.parametrize("n", [1, 50])
def test_ranks_match_a_brute_force_definition(n):
    rng = np.random.default_rng(n)
    points = rng.integers(0, 4, size=(n, 3)).astype(float)  # small integers: many ties and duplicates
    ranks = pareto_ranks(points, ["min", "max", "min"])
    v = points * np.array([1, -1, 1])

    def dominates(a, b):
        return (a <= b).all() and (a < b).any()

    for i in range(n):
        # rank r: dominated by some point of rank r - 1 (if r > 1), by none of rank >= r
        assert not any(dominates(v[j], v[i]) for j in range(n) if ranks[j] >= ranks[i])
        if ranks[i] > 1:
            assert any(dominates(v[j], v[i]) for j in range(n) if ranks[j] == ranks[i] - 1)
