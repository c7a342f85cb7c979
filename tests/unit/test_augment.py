"""Augmentation moves images and landmarks together (trainables/data/augment.py)."""

import math

import pytest
import torch

from trainables.data.augment import FILL, AugmentConfig, augment, is_active, validate
from trainables.heatmaps import render_gaussians

H, W = 48, 64  # H != W, so a wrong pixel <-> normalised conversion shows up under rotation
K = 3
SWAP01 = [1, 0, 2]  # landmarks 0 and 1 are a left/right pair, 2 lies on the midline


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _blob_batch(b=3):
    """One Gaussian blob per channel (B, K, H, W) on a black (FILL) background, at sub-pixel spots."""
    base = torch.tensor([[24.3, 17.6], [38.8, 21.2], [31.45, 30.7]])  # (K, 2) x, y near the centre
    coords = base + torch.tensor([[0.0, 0.0], [1.7, -0.9], [-2.3, 1.35]])[:b, None, :]  # (B, K, 2)
    blobs = render_gaussians(coords, torch.full((K,), 1.5), (H, W))
    return FILL + 3.0 * blobs, coords


def _centroid(images):
    """(B, K, H, W) -> (B, K, 2) intensity-weighted centroid of (image - FILL) per channel."""
    wgt = (images - FILL).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=wgt.dtype), torch.arange(W, dtype=wgt.dtype), indexing="ij")
    mass = wgt.sum(dim=(-1, -2))
    return torch.stack([(wgt * xs).sum(dim=(-1, -2)) / mass, (wgt * ys).sum(dim=(-1, -2)) / mass], -1)


def test_inactive_config_returns_the_same_objects():
    images, coords = _blob_batch()
    cfg = AugmentConfig()
    assert not is_active(cfg)
    out_images, out_coords = augment(images, coords, cfg, None, _gen())
    assert out_images is images and out_coords is coords
    assert is_active(AugmentConfig(intensity=0.1))


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_blobs_stay_on_their_landmarks_under_rotation_scale_translation(flip):
    images, coords = _blob_batch()
    # The blob centroids sit on the input coordinates to start with (the test's own premise).
    assert torch.allclose(_centroid(images), coords, atol=1e-3)
    cfg = AugmentConfig(flip=flip, scale=0.15, rotate=30.0, translate=0.08)
    out_images, out_coords = augment(images, coords, cfg, SWAP01, _gen(3))
    moved = (out_coords - coords).norm(dim=-1)
    assert moved.mean() > 2.0  # the transform really moved the landmarks
    # Flipped landmark k takes landmark flip_index[k]'s coordinates, i.e. channel flip_index[k]'s blob.
    expected = _centroid(out_images)[:, SWAP01] if flip else _centroid(out_images)
    # Measured error is ~0.005 px. 0.05 (not 0.5) also catches an align_corners=True conversion
    # (off by ~0.09 px here); forgetting that a normalised unit is W/2 px in x, H/2 in y is off by ~1.4 px.
    assert (out_coords - expected).norm(dim=-1).max() < 0.05, out_coords - expected


def test_flip_only_is_an_exact_mirror_with_reindexed_landmarks():
    images = torch.randn(2, 1, H, W, generator=_gen(1))
    coords = torch.tensor([[[10.25, 5.5], [50.0, 6.0], [31.5, 40.75]]]).repeat(2, 1, 1)
    out_images, out_coords = augment(images, coords, AugmentConfig(flip=1.0), SWAP01, _gen())
    assert torch.equal(out_images, torch.flip(images, dims=[-1]))
    # x -> W - 1 - x, y unchanged, then 0 <-> 1 swapped: landmark 0 gets old landmark 1 mirrored.
    expected = torch.tensor([[[63 - 50.0, 6.0], [63 - 10.25, 5.5], [63 - 31.5, 40.75]]]).repeat(2, 1, 1)
    assert torch.equal(out_coords, expected)


def test_flip_without_a_flip_map_is_refused():
    images, coords = _blob_batch()
    with pytest.raises(ValueError, match="flip_index"):
        augment(images, coords, AugmentConfig(flip=0.5), None, _gen())
    augment(images, coords, AugmentConfig(rotate=5.0), None, _gen())  # no flip: None is fine


def test_outside_pixels_are_black_before_intensity():
    images = torch.zeros(1, 1, H, W)  # mid grey
    cfg = AugmentConfig(translate=0.5)
    out, _ = augment(images, torch.zeros(1, 0, 2), cfg, None, _gen(2))
    assert out.min().item() == pytest.approx(FILL)  # a shift of up to half the image leaves a black band
    assert out.max().item() == pytest.approx(0.0, abs=1e-6)


def test_nan_rows_stay_nan():
    images, coords = _blob_batch()
    coords = coords.clone()
    coords[0, 1] = math.nan
    coords[2, 0] = math.nan
    cfg = AugmentConfig(flip=1.0, scale=0.1, rotate=20.0, translate=0.05)
    _, out = augment(images, coords, cfg, SWAP01, _gen())
    missing = out.isnan()
    # Flipping swaps 0 <-> 1, so the missing rows swap places too; nothing else goes NaN.
    assert missing[0, 0].all() and missing[2, 1].all()
    assert missing.sum() == 4


def test_intensity_is_a_per_image_gain_and_bias():
    images = torch.randn(4, 1, H, W, generator=_gen(5))
    i = 0.2
    out, _ = augment(images, torch.zeros(4, 0, 2), AugmentConfig(intensity=i), None, _gen())
    x, y = images.flatten(1), out.flatten(1)
    gain = ((y - y.mean(1, keepdim=True)) * (x - x.mean(1, keepdim=True))).sum(1) / (
        (x - x.mean(1, keepdim=True)) ** 2
    ).sum(1)
    bias = y.mean(1) - gain * x.mean(1)
    assert torch.allclose(y, gain[:, None] * x + bias[:, None], atol=1e-5)  # exactly affine per image
    assert ((gain >= 1 - i) & (gain <= 1 + i)).all() and (bias.abs() <= i).all()
    assert gain.std() > 0.01  # different per image


def test_same_seed_same_output_different_seed_different():
    images, coords = _blob_batch()
    cfg = AugmentConfig(flip=0.5, scale=0.1, rotate=15.0, translate=0.05, intensity=0.1)
    a = augment(images, coords, cfg, SWAP01, _gen(7))
    b = augment(images, coords, cfg, SWAP01, _gen(7))
    c = augment(images, coords, cfg, SWAP01, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[1], c[1]) and not torch.allclose(a[0], c[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    images, coords = _blob_batch()
    cfg = AugmentConfig(flip=0.5, scale=0.1, rotate=15.0, translate=0.05, intensity=0.1)
    cpu = augment(images, coords, cfg, SWAP01, _gen(7))
    gpu = augment(images.cuda(), coords.cuda(), cfg, SWAP01, _gen(7))
    assert gpu[0].is_cuda and gpu[1].is_cuda
    assert torch.allclose(gpu[0].cpu(), cpu[0], atol=1e-4) and torch.allclose(gpu[1].cpu(), cpu[1], atol=1e-4)


def test_validate_names_each_bad_field():
    assert validate(AugmentConfig()) == []
    assert validate(AugmentConfig(flip=1.0, scale=0.5, rotate=180.0, translate=0.2, intensity=3.0)) == []
    bad = AugmentConfig(flip=1.5, scale=1.0, rotate=-5.0, translate=math.nan, intensity=-0.1)
    problems = validate(bad)
    assert len(problems) == 5
    for name in ("flip", "scale", "rotate", "translate", "intensity"):
        assert any(p.startswith(f"data.augment.{name}: must be") for p in problems), (name, problems)
    assert "data.augment.scale: must be in [0, 1), got 1.0; 0 turns it off" in problems
    assert validate(AugmentConfig(rotate=181.0)) == [
        "data.augment.rotate: must be in [0, 180], got 181.0; 0 turns it off"
    ]
