"""Gaussian heatmap targets and their decoding, sharing one pixel-centre convention.

Convention (used everywhere in the project): a landmark coordinate (x, y) is in input
pixels, with the centre of pixel column j at x = j and of row i at y = i (torchvision's
KeyPoints convention: a horizontal flip maps x to W - 1 - x). A heatmap at output stride s
has its pixel u centred at input coordinate (u + 0.5)·s - 0.5, the align_corners=False
relation of `F.interpolate`. Rendering and decoding both go through `heatmap_centres`.

    coords = torch.tensor([[[12.3, 40.7]]])                      # (B, K, 2)
    h = render_gaussians(coords, torch.tensor([2.0]), (64, 48))  # (B, K, 64, 48)
    decode_argmax(h)                                             # (B, K, 2) -> [[[12., 41.]]]
"""

from __future__ import annotations

import torch
from torch import Tensor


def heatmap_centres(n: int, stride: int, device=None, dtype=torch.float32) -> Tensor:
    """Input-pixel coordinate of each of n heatmap pixel centres, (n,)."""
    return (torch.arange(n, device=device, dtype=dtype) + 0.5) * stride - 0.5


def render_gaussians(coords: Tensor, sigma: Tensor, size: tuple[int, int], stride: int = 1) -> Tensor:
    """Unnormalised Gaussians exp(-d²/2σ²) (farnet paper eq 1), separably, in one batched call.

    coords: (B, K, 2) float (x, y) in input pixels, never quantised.
    sigma:  (K,) or (B, K) σ in input pixels, so the same σ means the same blob at any stride.
    size:   (H, W) of the heatmap (input size // stride).
    Returns (B, K, H, W) with peak value 1 at the landmark (less when it falls between pixels).
    """
    h, w = size
    sigma = sigma.to(coords).expand(coords.shape[:2])  # (B, K)
    xs = heatmap_centres(w, stride, coords.device, coords.dtype)
    ys = heatmap_centres(h, stride, coords.device, coords.dtype)
    two_var = (2 * sigma**2)[..., None]  # (B, K, 1)
    gx = torch.exp(-((xs - coords[..., 0:1]) ** 2) / two_var)  # (B, K, W)
    gy = torch.exp(-((ys - coords[..., 1:2]) ** 2) / two_var)  # (B, K, H)
    return gy[..., :, None] * gx[..., None, :]


def decode_argmax(heatmaps: Tensor, stride: int = 1) -> Tensor:
    """(B, K, H, W) -> (B, K, 2) input-pixel (x, y) of each heatmap's maximum."""
    b, k, h, w = heatmaps.shape
    idx = heatmaps.reshape(b, k, h * w).argmax(dim=-1)
    u = (idx % w).to(heatmaps.dtype)
    v = torch.div(idx, w, rounding_mode="floor").to(heatmaps.dtype)
    return torch.stack([(u + 0.5) * stride - 0.5, (v + 0.5) * stride - 0.5], dim=-1)


DECODERS = {"argmax": decode_argmax}
