"""MRE and SDR as the ISBI 2015 challenge defines them, NME, FR and AUC as 300-W does,
on hand-made predictions with the expected values worked out by hand."""

import math

import pytest
import torch

from trainables.metrics import (
    NME_AUC_PERCENT,
    NME_FR_PERCENT,
    SDR_RADII_MM,
    all_metric_names,
    auc,
    ced,
    failure_rate,
    format_table,
    normalized_errors,
    per_image,
    per_landmark_table,
    radial_errors_mm,
    reported_metrics,
    summarize,
)

NAN = float("nan")


def test_radial_errors_use_pixel_spacing_per_image():
    gt = torch.zeros(2, 2, 2)
    pred = torch.tensor([[[3.0, 4.0], [0.0, 10.0]], [[6.0, 8.0], [0.0, 0.0]]])
    # Image 0 at 0.1 mm/px: 5 px -> 0.5 mm, 10 px -> 1.0 mm. Image 1 at 0.5 mm/px: 10 px -> 5 mm, 0.
    err = radial_errors_mm(pred, gt, torch.tensor([0.1, 0.5]))
    assert err.flatten().tolist() == pytest.approx([0.5, 1.0, 5.0, 0.0])


def test_summary_by_hand():
    # Errors 0.5, 1.0, 5.0, 0.0 mm: MRE = 6.5 / 4 = 1.625; population SD = sqrt(mean((e - 1.625)²))
    # = sqrt((1.265625 + 0.390625 + 11.390625 + 2.640625) / 4) = sqrt(3.921875) = 1.980372.
    # SDR 2 mm: 3 of 4 within -> 75 %; 4 mm the same; the 5 mm error fails every radius up to 4.
    s = summarize(torch.tensor([[0.5, 1.0], [5.0, 0.0]]), "val")
    assert s["val/mre_mm"] == pytest.approx(1.625)
    assert s["val/mre_sd_mm"] == pytest.approx(1.980372, rel=1e-6)
    assert s["val/sdr_2mm"] == pytest.approx(75.0)
    assert s["val/sdr_2.5mm"] == pytest.approx(75.0)
    assert s["val/sdr_4mm"] == pytest.approx(75.0)


def test_sdr_radius_is_inclusive():
    # An error of exactly 2.0 mm counts as detected within 2 mm (the challenge's "within" radius).
    assert summarize(torch.tensor([[2.0, 2.001]]), "val")["val/sdr_2mm"] == pytest.approx(50.0)


def test_mm_summary_ignores_unannotated_landmarks_and_adds_fr_and_auc():
    # The same four errors as test_summary_by_hand, spread over 3 images with two NaN (unannotated)
    # landmarks: MRE 1.625, SD 1.980372, SDR 2 mm 75 % exactly as before (NaNs counted nowhere).
    # FR at 2 mm: only 5.0 > 2 -> 1 of 4 = 25 % = 100 - SDR 2 mm.
    # AUC at 4 mm: mean(max(0, 4 - e)) / 4 = (3.5 + 3.0 + 0 + 4.0) / 4 / 4 = 2.625 / 4 = 0.65625.
    err = torch.tensor([[0.5, NAN], [1.0, 5.0], [NAN, 0.0]])
    s = summarize(err, "val", fr_threshold=2.0, auc_threshold=4.0)
    assert s["val/mre_mm"] == pytest.approx(1.625)
    assert s["val/mre_sd_mm"] == pytest.approx(1.980372, rel=1e-6)
    assert s["val/sdr_2mm"] == pytest.approx(75.0)
    assert s["val/fr"] == pytest.approx(25.0) == 100.0 - s["val/sdr_2mm"]
    assert s["val/auc"] == pytest.approx(0.65625)


def test_mm_pipeline_with_nan_ground_truth_rows():
    # 3-4-5 triangles at 0.1 mm/px. Image 0: errors 5 px and 10 px -> 0.5, 1.0 mm.
    # Image 1: landmark 0 off by (30, 40) px -> 5.0 mm; landmark 1 not annotated (gt NaN).
    # MRE = (0.5 + 1.0 + 5.0) / 3 = 2.166667; SDR 2 mm = 2 of 3 = 66.667 %; SDR 4 mm the same.
    gt = torch.tensor([[[0.0, 0.0], [10.0, 10.0]], [[0.0, 0.0], [NAN, NAN]]])
    pred = torch.tensor([[[3.0, 4.0], [16.0, 18.0]], [[30.0, 40.0], [1.0, 1.0]]])
    err = radial_errors_mm(pred, gt, torch.tensor([0.1, 0.1]))
    assert math.isnan(err[1, 1])
    s = summarize(err, "test")
    assert s["test/mre_mm"] == pytest.approx(6.5 / 3)
    assert s["test/sdr_2mm"] == pytest.approx(200.0 / 3)
    assert s["test/sdr_4mm"] == pytest.approx(200.0 / 3)


def test_thresholds_left_out_leave_fr_and_auc_out():
    s = summarize(torch.tensor([[1.0]]), "val")
    assert "val/fr" not in s and "val/auc" not in s


@pytest.mark.parametrize("unit", ["mm", "nme"])
def test_all_nan_gives_nan_values_not_an_exception(unit):
    s = summarize(torch.full((2, 3), NAN), "val", unit=unit, fr_threshold=2.0, auc_threshold=4.0)
    assert s and all(math.isnan(v) for v in s.values())


def test_unknown_unit_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown 'px'.*'mm', 'nme'"):
        summarize(torch.ones(1, 1), "val", unit="px")


def test_normalized_errors_by_hand():
    # Normaliser pair (0, 1). Image 0: gt 0 at (0, 0), gt 1 at (6, 8) -> d = 10.
    #   landmark 0 predicted at (3, 4): 5 / 10 -> 50 %; landmark 1 exact -> 0 %;
    #   landmark 2 gt (20, 0) predicted (20, 1): 1 / 10 -> 10 %.
    # Image 1: same geometry, landmark 2 not annotated -> NaN there only.
    # Image 2: landmark 1 not annotated -> normaliser NaN -> the whole image NaN.
    # Image 3: both eye corners at (0, 0) -> normaliser 0 -> the whole image NaN (no inf).
    gt0 = [[0.0, 0.0], [6.0, 8.0], [20.0, 0.0]]
    gt = torch.tensor(
        [
            gt0,
            [[0.0, 0.0], [6.0, 8.0], [NAN, NAN]],
            [[0.0, 0.0], [NAN, NAN], [20.0, 0.0]],
            [[0.0, 0.0], [0.0, 0.0], [20.0, 0.0]],
        ]
    )
    pred = torch.tensor([[[3.0, 4.0], [6.0, 8.0], [20.0, 1.0]]] * 4)
    nme = normalized_errors(pred, gt, (0, 1))
    assert nme.shape == (4, 3)
    assert nme[0].tolist() == pytest.approx([50.0, 0.0, 10.0])
    assert nme[1, :2].tolist() == pytest.approx([50.0, 0.0]) and math.isnan(nme[1, 2])
    assert torch.isnan(nme[2:]).all()


def test_per_image_is_a_nan_mean_over_landmarks():
    # Image 0: (1 + 3) / 2 = 2, the NaN not counted; image 1: nothing annotated -> NaN; image 2: 9 / 3 = 3.
    m = per_image(torch.tensor([[1.0, 3.0, NAN], [NAN, NAN, NAN], [2.0, 2.0, 5.0]]))
    assert m.shape == (3,)
    assert m[0].item() == pytest.approx(2.0) and math.isnan(m[1]) and m[2].item() == pytest.approx(3.0)


def test_failure_rate_counts_strictly_above_threshold_over_finite_images():
    # Finite: 5, 10, 10.01, 20 (the NaN image is not counted); above 10: 10.01 and 20 -> 2 / 4 = 50 %.
    assert failure_rate(torch.tensor([5.0, 10.0, 10.01, NAN, 20.0]), 10.0) == pytest.approx(50.0)
    assert math.isnan(failure_rate(torch.tensor([NAN]), 10.0))


def test_ced_by_hand():
    # Finite errors 0.5, 1, 3 (NaN ignored), T = 2, 5 points: x = 0, 0.5, 1, 1.5, 2;
    # fraction <= x: 0, 1/3 (0.5 counts at 0.5), 2/3, 2/3, 2/3 (3 > T never counts).
    x, y = ced(torch.tensor([0.5, 1.0, 3.0, NAN]), 2.0, points=5)
    assert x.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert y.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 2 / 3, 2 / 3])


def test_auc_by_hand():
    # Errors 0.5, 1, 3 (NaN ignored), T = 2. Closed form: mean(max(0, 2 - e)) / 2 = (1.5 + 1 + 0) / 3 / 2
    # = 5/12 = 0.416667. As an integral of the CED: 1/3 on [0.5, 1) + 2/3 on [1, 2] = 1/6 + 2/3 = 5/6, / 2.
    assert auc(torch.tensor([0.5, 1.0, 3.0, NAN]), 2.0) == pytest.approx(5 / 12)
    assert auc(torch.zeros(4), 8.0) == pytest.approx(1.0)
    assert auc(torch.tensor([8.0, 9.0]), 8.0) == pytest.approx(0.0)
    assert math.isnan(auc(torch.tensor([NAN]), 8.0))


def test_auc_matches_a_fine_trapezoid_of_the_ced():
    # Trapezoid of a step function errs by at most h/2 per unit jump; h/2 / T = 1 / (2 · 20000) = 2.5e-5.
    g = torch.Generator().manual_seed(0)
    e = torch.rand(50, generator=g, dtype=torch.float64) * 12.0  # some beyond T = 8
    e[::7] = NAN
    x, y = ced(e, 8.0, points=20001)
    assert auc(e, 8.0) == pytest.approx(torch.trapezoid(y, x).item() / 8.0, abs=1e-4)


def test_auc_rejects_a_non_positive_threshold():
    with pytest.raises(ValueError, match="threshold must be"):
        auc(torch.ones(3), 0.0)


def test_nme_summary_by_hand():
    # Per-landmark NME (%), per-image means: image 0 (2 + 4) / 2 = 3; image 1 only 12 annotated -> 12;
    # image 2 nothing annotated -> left out; image 3 (6 + 8) / 2 = 7.
    # NME = (3 + 12 + 7) / 3 = 7.333333; population SD: deviations -4.3333, 4.6667, -0.3333,
    # squares 18.7778 + 21.7778 + 0.1111 = 40.6667, / 3 = 13.5556, sqrt -> 3.681787.
    # FR at 10 %: only 12 -> 1 / 3 = 33.333 %. AUC at 8 %: (5 + 0 + 1) / 3 / 8 = 0.25.
    err = torch.tensor([[2.0, 4.0], [12.0, NAN], [NAN, NAN], [6.0, 8.0]])
    s = summarize(err, "val", unit="nme", fr_threshold=NME_FR_PERCENT, auc_threshold=NME_AUC_PERCENT)
    assert set(s) == {"val/nme", "val/nme_sd", "val/fr", "val/auc"}
    assert s["val/nme"] == pytest.approx(22 / 3)
    assert s["val/nme_sd"] == pytest.approx(math.sqrt(122 / 9), rel=1e-9)  # 40.6667 / 3 = 122 / 9
    assert s["val/nme_sd"] == pytest.approx(3.681787, rel=1e-6)
    assert s["val/fr"] == pytest.approx(100 / 3)
    assert s["val/auc"] == pytest.approx(0.25)


def test_nme_pipeline_from_coordinates():
    # Inter-ocular pair (0, 1) at distance 10 px in both images (3-4-5 scaled: (6, 8)).
    # Image 0: landmark 2 off by (3, 4) = 5 px -> 50 %, others exact -> per-image (0 + 0 + 50) / 3 = 16.667.
    # Image 1: landmark 2 off by (0.6, 0.8) = 1 px -> 10 %, landmark 0 not annotated -> (0 + 10) / 2 = 5.
    # NME = (16.667 + 5) / 2 = 10.833; FR at 10 %: 16.667 fails -> 50 %.
    gt = torch.tensor([[[0.0, 0.0], [6.0, 8.0], [10.0, 0.0]], [[0.0, 0.0], [6.0, 8.0], [10.0, 0.0]]])
    pred = gt.clone()
    pred[0, 2] += torch.tensor([3.0, 4.0])
    pred[1, 2] += torch.tensor([0.6, 0.8])
    nme = normalized_errors(pred, gt, (0, 1))
    nme[1, 0] = NAN  # as if gt 0 of image 1 were missing after normalising
    s = summarize(nme, "val", unit="nme", fr_threshold=10.0)
    assert s["val/nme"] == pytest.approx((50 / 3 + 5) / 2, rel=1e-6)
    assert s["val/fr"] == pytest.approx(50.0)


def test_per_landmark_table_by_hand():
    # Landmark 0: 0.5, 1, 3, 2 -> n 4, mean 6.5 / 4 = 1.625, population SD: deviations -1.125, -0.625,
    #   1.375, 0.375, squares sum 3.6875, / 4 = 0.921875 -> 0.960143; median (1 + 2) / 2 = 1.5; max 3;
    #   SDR 2 mm 3 / 4 = 75 %, 2.5 mm 75 %, 3 mm 100 %, 4 mm 100 %.
    # Landmark 1: only 5 -> n 1, mean = median = max = 5, SD 0, every SDR 0 %.
    # Landmark 2: never annotated -> n 0, NaN statistics.
    err = torch.tensor([[0.5, NAN, NAN], [1.0, 5.0, NAN], [3.0, NAN, NAN], [2.0, NAN, NAN]])
    rows = per_landmark_table(err)
    assert [r["landmark"] for r in rows] == [0, 1, 2]
    assert list(rows[0]) == ["landmark", "n", "mean", "sd", "median", "max"] + [
        "sdr_2mm",
        "sdr_2.5mm",
        "sdr_3mm",
        "sdr_4mm",
    ]
    assert len(SDR_RADII_MM) == 4
    r0 = rows[0]
    assert r0["n"] == 4 and r0["mean"] == pytest.approx(1.625) and r0["sd"] == pytest.approx(0.960143, rel=1e-6)
    assert r0["median"] == pytest.approx(1.5) and r0["max"] == pytest.approx(3.0)
    assert [r0[k] for k in ("sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm")] == pytest.approx([75, 75, 100, 100])
    r1 = rows[1]
    assert (r1["n"], r1["mean"], r1["sd"], r1["median"], r1["max"]) == (1, 5.0, 0.0, 5.0, 5.0)
    assert r1["sdr_4mm"] == 0.0
    assert rows[2]["n"] == 0 and all(math.isnan(rows[2][k]) for k in ("mean", "sd", "median", "max", "sdr_2mm"))


def test_per_landmark_table_nme_has_no_sdr_columns():
    rows = per_landmark_table(torch.tensor([[2.0], [4.0]]), unit="nme")
    assert rows == [{"landmark": 0, "n": 2, "mean": 3.0, "sd": 1.0, "median": 3.0, "max": 4.0}]


def test_format_table_is_fixed_width():
    err = torch.tensor([[0.5, NAN, 12.25], [1.0, 5.0, 100.0]])
    text = format_table(per_landmark_table(err))
    lines = text.splitlines()
    assert len(lines) == 1 + 3  # header + one line per landmark
    assert lines[0].split() == [
        "landmark",
        "n",
        "mean",
        "sd",
        "median",
        "max",
        "sdr_2mm",
        "sdr_2.5mm",
        "sdr_3mm",
        "sdr_4mm",
    ]
    assert len({len(line) for line in lines}) == 1
    # Landmark 2: 12.25 and 100 -> mean 56.125 -> "56.12" or "56.13" (2 decimals); max 100.00.
    assert lines[3].split()[:2] == ["2", "2"] and lines[3].split()[5] == "100.00"
    assert format_table([]) == ""


def test_reported_names_follow_split_name_unit():
    names = reported_metrics()
    assert {"train/loss", "val/mre_mm", "val/sdr_2mm", "val/sdr_2.5mm", "val/fr", "val/auc", "cost/epoch_s"} <= set(
        names
    )
    assert all(n.count("/") == 1 for n in names)


def test_nme_names_replace_the_mm_names():
    names = set(reported_metrics("nme"))
    assert {"train/loss", "val/loss", "val/nme", "val/nme_sd", "val/fr", "val/auc", "cost/epoch_s"} <= names
    assert not any(n.endswith("mm") for n in names)


@pytest.mark.parametrize("unit", ["mm", "nme"])
def test_summarize_gives_exactly_the_reported_val_names(unit):
    s = summarize(torch.ones(2, 3), "val", unit=unit, fr_threshold=1.0, auc_threshold=2.0)
    assert set(s) == {n for n in reported_metrics(unit) if n.startswith("val/") and n != "val/loss"}


def test_all_metric_names_is_the_union_without_duplicates():
    names = all_metric_names()
    assert len(names) == len(set(names))
    assert set(names) == set(reported_metrics("mm")) | set(reported_metrics("nme"))
    assert names[: len(reported_metrics("mm"))] == reported_metrics("mm")
