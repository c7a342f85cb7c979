"""MRE and SDR as the ISBI 2015 challenge defines them, on hand-made predictions."""

import pytest
import torch

from trainables.metrics import radial_errors_mm, reported_metrics, summarize


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


def test_reported_names_follow_split_name_unit():
    names = reported_metrics()
    assert {"train/loss", "val/mre_mm", "val/sdr_2mm", "val/sdr_2.5mm", "cost/epoch_s"} <= set(names)
    assert all(n.count("/") == 1 for n in names)
