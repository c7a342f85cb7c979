"""Target rendering and argmax decoding share one pixel-centre convention (trainables/heatmaps.py)."""

import math

import pytest
import torch

from trainables.heatmaps import decode_argmax, heatmap_centres, render_gaussians


def test_gaussian_values_match_eq1_by_hand():
    # farnet eq 1: H(i, j) = exp(-((i - i_k)² + (j - j_k)²) / 2σ²). Landmark at x=5, y=3, σ=2:
    # at the landmark 1; one pixel right exp(-1/8) = 0.882497; at (x=7, y=4) exp(-(4 + 1)/8) = 0.535261.
    h = render_gaussians(torch.tensor([[[5.0, 3.0]]]), torch.tensor([2.0]), (8, 10))
    assert h.shape == (1, 1, 8, 10)
    assert h[0, 0, 3, 5].item() == pytest.approx(1.0)
    assert h[0, 0, 3, 6].item() == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    assert h[0, 0, 4, 7].item() == pytest.approx(math.exp(-5 / 8), rel=1e-6)


def test_sub_pixel_centre_is_not_quantised():
    # A centre at x = 5.5 lies halfway between columns 5 and 6: both get exp(-0.25/8), equal.
    h = render_gaussians(torch.tensor([[[5.5, 3.0]]]), torch.tensor([2.0]), (8, 10))
    assert h[0, 0, 3, 5].item() == pytest.approx(h[0, 0, 3, 6].item())
    assert h[0, 0, 3, 5].item() == pytest.approx(math.exp(-0.25 / 8), rel=1e-6)


def test_per_sample_sigma_and_batch_shapes():
    coords = torch.rand(3, 4, 2) * 20
    sigma = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).expand(3, 4)
    h = render_gaussians(coords, sigma, (24, 20))
    assert h.shape == (3, 4, 24, 20)
    # A wider σ spreads more mass: total mass grows with σ² for landmarks well inside the map.
    inner = render_gaussians(torch.full((1, 4, 2), 10.0), sigma[:1], (24, 20)).sum(dim=(-1, -2))[0]
    assert torch.all(inner[1:] > inner[:-1])


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_round_trip_on_heatmap_pixel_centres(stride):
    # Points that sit exactly on heatmap pixel centres come back exactly, at every stride.
    h, w = 48 // stride, 40 // stride
    xs, ys = heatmap_centres(w, stride), heatmap_centres(h, stride)
    coords = torch.stack([torch.stack([xs[3], ys[7]]), torch.stack([xs[w - 2], ys[1]])])[None]  # (1, 2, 2)
    heat = render_gaussians(coords, torch.tensor([2.0, 3.0]), (h, w), stride)
    assert torch.allclose(decode_argmax(heat, stride), coords)


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_argmax_round_trip_is_within_half_a_heatmap_pixel(stride):
    # Sub-pixel positions: argmax lands on the nearest heatmap pixel, at most stride/2 away per axis.
    torch.manual_seed(0)
    coords = torch.rand(2, 5, 2) * torch.tensor([36.0, 44.0]) + 2
    heat = render_gaussians(coords, torch.full((5,), 2.5), (48 // stride, 40 // stride), stride)
    err = (decode_argmax(heat, stride) - coords).abs()
    assert err.max().item() <= stride / 2 + 1e-5


def test_render_and_decode_agree_on_the_origin_convention():
    # Centre of the top-left input pixel is (0, 0); at stride 2 its heatmap pixel centre is (0.5, 0.5).
    assert heatmap_centres(3, 1).tolist() == [0.0, 1.0, 2.0]
    assert heatmap_centres(3, 2).tolist() == [0.5, 2.5, 4.5]
    heat = render_gaussians(torch.tensor([[[0.5, 0.5]]]), torch.tensor([1.0]), (4, 4), stride=2)
    assert decode_argmax(heat, 2).tolist() == [[[0.5, 0.5]]]
