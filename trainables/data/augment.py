"""Batched augmentation of images and landmark coordinates together, on the tensors' device.

One pixel-space affine per sample about the image centre c = ((W - 1)/2, (H - 1)/2), in the
convention of trainables/heatmaps.py (pixel column j centred at x = j, so a flip maps x to
W - 1 - x):

    p_out = R(θ) · s · F · (p_in - c) + c + t        F = diag(-1, 1) when flipped, else I

The same map moves the coordinates, so a landmark stays on the same image content; the images
are resampled through its inverse with one F.affine_grid + F.grid_sample call (bilinear). Then
intensity: x·c + b per image. All random numbers come from a CPU generator, so a seed fixes a
run whatever the device. All fields zero = off, the default (farnet paper §4.2 trains ISBI
without augmentation).

    cfg = AugmentConfig(flip=0.5, rotate=10.0, scale=0.1, translate=0.05, intensity=0.1)
    g = torch.Generator().manual_seed(0)
    images, coords = augment(images, coords, cfg, flip_index, g)  # (B, C, H, W), (B, K, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
import torch
import torch.nn.functional as F
from torch import Tensor

# The config and its checks live with the trial config (no torch: the spec checker and the Train
# controller read them); re-exported here beside the operation they configure.
from trainables.config import AugmentConfig, augment_problems as validate, is_active  # noqa: F401

# Value of pixels warped in from outside the image: black in the dataset's normalised units,
# (0 - PIXEL_MEAN) / PIXEL_STD = (0 - 0.5) / 0.25 (trainables/data/dataset.py). 0 would be mid grey.
FILL = -2.0


def _geometric(cfg: AugmentConfig) -> bool:
    return cfg.flip != 0 or cfg.scale != 0 or cfg.rotate != 0 or cfg.translate != 0


def _forward_affine(u: Tensor, flipped: Tensor, cfg: AugmentConfig, h: int, w: int) -> Tensor:
    """Pixel-space forward maps p_in -> p_out, (B, 2, 3) float64, from uniforms u (B, 4) in [0, 1)."""
    b = u.shape[0]
    s = 1.0 + cfg.scale * (2 * u[:, 0] - 1)
    theta = math.radians(cfg.rotate) * (2 * u[:, 1] - 1)
    t = cfg.translate * (2 * u[:, 2:4] - 1) * torch.tensor([w, h], dtype=torch.float64)  # (B, 2)
    f = 1.0 - 2.0 * flipped.double()  # -1 flipped, +1 not
    cos, sin = torch.cos(theta), torch.sin(theta)
    a = torch.stack([torch.stack([cos * s * f, -sin * s], -1), torch.stack([sin * s * f, cos * s], -1)], -2)
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64).expand(b, 2)
    shift = c + t - (a @ c[..., None])[..., 0]  # (B, 2)
    return torch.cat([a, shift[..., None]], -1)


def _to_normalised_theta(m: Tensor, h: int, w: int) -> Tensor:
    """affine_grid's theta (output -> input sampling, align_corners=False) from pixel-space forward maps.

    Pixels and normalised coordinates relate by x_n = (2x + 1)/W - 1, i.e. p_n = D p + e with
    D = diag(2/W, 2/H), e = (1/W - 1, 1/H - 1), i.e. the homogeneous N = [D | e]. The grid maps
    output to input, so theta = N · M⁻¹ · N⁻¹ (M the forward map, homogeneous). Its 2×2 part is
    D A⁻¹ D⁻¹, not a pure rotation when H ≠ W: a normalised unit is W/2 px in x but H/2 px in y.
    """
    b = m.shape[0]
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(b, 1, 3)
    m3 = torch.cat([m, bottom], 1)  # (B, 3, 3)
    n = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], dtype=torch.float64)
    return (n @ torch.linalg.inv(m3) @ torch.linalg.inv(n))[:, :2]


def augment(
    images: Tensor,
    coords: Tensor,
    cfg: AugmentConfig,
    flip_index: Sequence[int] | None,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Augment a batch: images (B, C, H, W) float, coords (B, K, 2) (x, y) input px, NaN = missing.

    flip_index: K ints; a flipped sample's landmark k takes landmark flip_index[k]'s (moved)
    coordinates, e.g. left eye <-> right eye. None only when cfg.flip == 0.
    Returns new (images, coords) on the inputs' device, or the inputs themselves when inactive.
    Pixels from outside the image are FILL (before the intensity change).
    """
    if cfg.flip != 0 and flip_index is None:
        raise ValueError("data.augment.flip: this dataset has no flip map (flip_index is None); set flip to 0")
    if not is_active(cfg):
        return images, coords
    bsz, _, h, w = images.shape
    k = coords.shape[1]
    # Draw every number on CPU from the generator, a fixed count per sample whatever is switched on.
    u = torch.rand(bsz, 7, generator=generator, dtype=torch.float64)
    flipped = u[:, 0] < cfg.flip  # (B,)

    if _geometric(cfg):
        m = _forward_affine(u[:, 1:5], flipped, cfg, h, w)  # (B, 2, 3) pixel space
        if cfg.scale == 0 and cfg.rotate == 0 and cfg.translate == 0:
            # Flip only: an exact mirror, no resampling blur and no rounding.
            mask = flipped.to(images.device)[:, None, None, None]
            images = torch.where(mask, images.flip(-1), images)
        else:
            theta = _to_normalised_theta(m, h, w).to(images.device, images.dtype)
            grid = F.affine_grid(theta, list(images.shape), align_corners=False)
            # Warp (x - FILL) with zero padding, then add FILL back: outside pixels come in black.
            warped = F.grid_sample(images - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            images = warped + FILL
        mt = m.to(coords.device, coords.dtype)
        coords = (coords @ mt[:, :, :2].transpose(1, 2)) + mt[:, None, :, 2]  # NaN rows stay NaN
        if flipped.any():
            idx = torch.as_tensor(list(flip_index), dtype=torch.long, device=coords.device)
            if idx.shape != (k,):
                raise ValueError(f"flip_index: expected {k} entries, one per landmark, got {idx.numel()}")
            coords = torch.where(flipped.to(coords.device)[:, None, None], coords[:, idx], coords)

    if cfg.intensity != 0:
        i = cfg.intensity
        gain = (1 + i * (2 * u[:, 5] - 1)).to(images.device, images.dtype)[:, None, None, None]
        bias = (i * (2 * u[:, 6] - 1)).to(images.device, images.dtype)[:, None, None, None]
        images = images * gain + bias
    return images, coords
