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


# ---- sub-pixel decoding, DARK, flips, normalisation, the renderer's buffers ----

from trainables.heatmaps import TargetRenderer, decode_dark, decode_subpixel  # noqa: E402

H_IN, W_IN = 96, 80  # input size used below; divisible by every stride tested


def _random_coords(b: int, k: int, margin: float, seed: int) -> torch.Tensor:
    """(B, K, 2) sub-pixel (x, y) at least `margin` input pixels inside the input image."""
    g = torch.Generator().manual_seed(seed)
    unit = torch.rand(b, k, 2, generator=g, dtype=torch.float64)
    span = torch.tensor([W_IN - 1 - 2 * margin, H_IN - 1 - 2 * margin], dtype=torch.float64)
    return (margin + unit * span).float()


def test_subpixel_decodes_the_docstring_example():
    # The module docstring: a Gaussian at (12.3, 40.7), σ = 2, decodes back to (12.3, 40.7).
    coords = torch.tensor([[[12.3, 40.7]]])
    heat = render_gaussians(coords, torch.tensor([2.0]), (64, 48))
    assert (decode_subpixel(heat) - coords).abs().max().item() < 0.05
    assert decode_argmax(heat).tolist() == [[[12.0, 41.0]]]


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_subpixel_round_trip_per_landmark_sigma(stride):
    # σ per landmark in input pixels, different in one call: 2, 3, 4.5, 6 (0.5 .. 6 heatmap pixels).
    # The log of a sampled Gaussian is an exact parabola, so the vertex is the landmark.
    coords = _random_coords(3, 4, margin=2 * stride + 1, seed=stride)
    sigma = torch.tensor([2.0, 3.0, 4.5, 6.0])
    heat = render_gaussians(coords, sigma, (H_IN // stride, W_IN // stride), stride)
    err = (decode_subpixel(heat, stride) - coords).abs()
    assert err.max().item() < 0.05, err.max().item()


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_subpixel_round_trip_per_image_sigma(stride):
    # (B, K) σ: every image-landmark pair has its own σ in [2, 6] input pixels.
    coords = _random_coords(4, 3, margin=2 * stride + 1, seed=10 + stride)
    sigma = 2 + 4 * torch.rand(4, 3, generator=torch.Generator().manual_seed(stride))
    heat = render_gaussians(coords, sigma, (H_IN // stride, W_IN // stride), stride)
    err = (decode_subpixel(heat, stride) - coords).abs()
    assert err.max().item() < 0.05, err.max().item()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("sigma_hm", [2.0, 3.0, 4.0])
def test_dark_round_trip(stride, sigma_hm):
    # σ ≥ 2 heatmap pixels (σ_hm · stride in input pixels), blurred with the same σ; landmarks kept
    # 3σ + 4 heatmap pixels from the border, where the zero-padded blur bends the map.
    margin = (3 * sigma_hm + 4) * stride
    assert 2 * margin < W_IN - 1
    coords = _random_coords(2, 5, margin=margin, seed=int(10 * sigma_hm) + stride)
    heat = render_gaussians(coords, torch.full((5,), sigma_hm * stride), (H_IN // stride, W_IN // stride), stride)
    err = (decode_dark(heat, stride, sigma_hm) - coords).abs()
    assert err.max().item() < 0.05, err.max().item()


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_flip_maps_x_to_width_minus_one_minus_x(stride):
    # Module convention: a horizontal flip maps x to W − 1 − x (W in input pixels), y unchanged.
    # Heatmap column u ↔ x = (u + 0.5)·s − 0.5; the flip sends u to W/s − 1 − u, i.e.
    # x' = (W/s − 0.5 − u)·s − 0.5 = W − (u + 0.5)·s − 0.5 = W − 1 − x.
    coords = _random_coords(2, 4, margin=2 * stride + 1, seed=20 + stride)
    heat = render_gaussians(coords, torch.tensor([2.0, 3.0, 4.0, 5.0]), (H_IN // stride, W_IN // stride), stride)
    flipped = torch.flip(heat, dims=[-1])
    want = torch.stack([W_IN - 1 - coords[..., 0], coords[..., 1]], dim=-1)
    assert (decode_subpixel(flipped, stride) - want).abs().max().item() < 0.05
    # Rendering the flipped coordinates gives the flipped heatmap.
    rendered = render_gaussians(want, torch.tensor([2.0, 3.0, 4.0, 5.0]), (H_IN // stride, W_IN // stride), stride)
    assert torch.allclose(rendered, flipped, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_flip_then_dark(stride):
    margin = 10 * stride
    coords = _random_coords(1, 4, margin=margin, seed=30 + stride)
    heat = render_gaussians(coords, torch.full((4,), 2.0 * stride), (H_IN // stride, W_IN // stride), stride)
    want = torch.stack([W_IN - 1 - coords[..., 0], coords[..., 1]], dim=-1)
    assert (decode_dark(torch.flip(heat, dims=[-1]), stride, 2.0) - want).abs().max().item() < 0.05


@pytest.mark.parametrize("stride", [1, 4])
def test_normalize_gives_mean_one_and_same_argmax(stride):
    # adaloss §4.3: each target divided by its mean, so every map has mean 1 whatever its σ.
    coords = _random_coords(2, 3, margin=4, seed=40)
    sigma = torch.tensor([1.0, 4.0, 12.0])
    size = (H_IN // stride, W_IN // stride)
    plain = render_gaussians(coords, sigma, size, stride)
    norm = render_gaussians(coords, sigma, size, stride, normalize=True)
    assert torch.allclose(norm.mean(dim=(-2, -1)), torch.ones(2, 3), atol=1e-5)
    assert torch.equal(decode_argmax(norm, stride), decode_argmax(plain, stride))
    # The ratio is one constant per map: plain · (1 / mean(plain)).
    assert torch.allclose(norm, plain / plain.mean(dim=(-2, -1), keepdim=True), rtol=1e-5, atol=1e-6)


def test_target_renderer_reuses_its_buffer_and_matches_render_gaussians():
    render = TargetRenderer(normalize=False)
    sigma = torch.tensor([2.0, 3.0])
    c1, c2 = _random_coords(2, 2, margin=3, seed=50), _random_coords(2, 2, margin=3, seed=51)
    first = render(c1, sigma, (48, 40), 2, slot=0)
    assert torch.equal(first, render_gaussians(c1, sigma, (48, 40), 2))
    ptr = first.data_ptr()
    second = render(c2, sigma, (48, 40), 2, slot=0)
    assert second.data_ptr() == ptr  # same slot, same shape: the same memory, overwritten
    assert torch.equal(second, render_gaussians(c2, sigma, (48, 40), 2))
    # Another slot gets its own buffer; a new shape in a slot gets a new one.
    other = render(c1, sigma, (96, 80), 1, slot=1)
    assert other.data_ptr() != ptr
    assert torch.equal(render(c2, sigma, (48, 40), 2, slot=0), second)  # slot 0 untouched by slot 1
    assert render(c1, sigma, (24, 20), 4, slot=0).shape == (2, 2, 24, 20)


def test_target_renderer_normalize_matches_render_gaussians():
    render = TargetRenderer(normalize=True)
    coords, sigma = _random_coords(2, 2, margin=3, seed=52), torch.tensor([2.0, 5.0])
    out = render(coords, sigma, (48, 40), 2)
    assert torch.equal(out, render_gaussians(coords, sigma, (48, 40), 2, normalize=True))


@pytest.mark.parametrize("normalize", [False, True])
def test_nan_coordinates_render_an_all_zero_map(normalize):
    coords = torch.tensor([[[10.0, 20.0], [float("nan"), float("nan")], [float("nan"), 5.0]]])
    heat = render_gaussians(coords, torch.tensor([2.0, 2.0, 2.0]), (32, 32), normalize=normalize)
    assert torch.isfinite(heat).all()
    assert heat[0, 1].abs().max().item() == 0.0
    assert heat[0, 2].abs().max().item() == 0.0
    assert heat[0, 0].max().item() > 0.5  # the annotated landmark is untouched
    # Decoding an all-zero map (a missing landmark) gives numbers, not NaN.
    for decode in (decode_argmax, decode_subpixel, decode_dark):
        assert torch.isfinite(decode(heat, 1, 2.0)).all()


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_landmark_at_the_border_decodes_without_nan(stride):
    # Corners and edge midpoints of the input, plus one just outside: the maximum sits on the
    # heatmap's first or last row/column, where the 3×3 window is edge-replicated.
    pts = [[0.0, 0.0], [W_IN - 1, H_IN - 1], [0.0, H_IN / 2], [W_IN / 2, H_IN - 1], [-0.4, 10.0]]
    coords = torch.tensor([pts])
    heat = render_gaussians(coords, torch.full((len(pts),), 2.0), (H_IN // stride, W_IN // stride), stride)
    for decode in (decode_argmax, decode_subpixel, decode_dark):
        out = decode(heat, stride, 2.0 / stride)
        assert torch.isfinite(out).all(), decode.__name__
        # At the border the decoders keep the pixel centre (no one-sided fit): within a heatmap pixel.
        assert (out - coords).abs().max().item() <= stride + 0.5, decode.__name__
