"""DARK decoding (trainables/heatmaps.py `decode_dark`) against a port of MMPose's, on noisy heatmaps.

The reference below follows MMPose 1.x line by line (mmpose/codecs/utils/post_processing.py
`gaussian_blur`, refinement.py `refine_keypoints_dark`, as `MSRAHeatmap.decode` calls them):
argmax of the raw heatmap; blur each map with cv2.GaussianBlur(k × k, σ = 0) inside a zero border
of (k − 1)/2 and rescale it to its former maximum; log of max(·, 1e-10); at the argmax, the
gradient by central differences, dxx and dyy over ±2 pixels / 4, dxy over the diagonal / 4, and
x −= H⁻¹∇ when det H ≠ 0 (only where 1 < x < W − 2 and 1 < y < H − 2). OpenCV is not a
dependency here, so its kernel is rebuilt as cv2.getGaussianKernel does for σ ≤ 0: the fixed
tables for k ≤ 7, else σ = 0.3·((k − 1)/2 − 1) + 0.8 (k = 11: σ 2; k = 17: σ 2.9), normalised.
The zero border is as wide as the kernel's radius, so OpenCV's border mode never reaches a kept pixel.
"""

from itertools import product

import numpy as np
import pytest
import torch

from trainables.heatmaps import decode_dark, decode_subpixel, render_gaussians

_CV_SMALL_KERNELS = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}


def cv2_gaussian_kernel(ksize: int) -> np.ndarray:
    """cv2.getGaussianKernel(ksize, 0) as float32 (ksize,)."""
    if ksize in _CV_SMALL_KERNELS:
        return np.asarray(_CV_SMALL_KERNELS[ksize], dtype=np.float32)
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def mmpose_gaussian_blur(heatmaps: np.ndarray, kernel: int = 11) -> np.ndarray:
    """MMPose `gaussian_blur`: (K, H, W) -> (K, H, W), each map blurred and rescaled to its maximum."""
    assert kernel % 2 == 1
    border = (kernel - 1) // 2
    K, H, W = heatmaps.shape
    g = cv2_gaussian_kernel(kernel)
    heatmaps = heatmaps.copy()
    for k in range(K):
        origin_max = np.max(heatmaps[k])
        dr = np.zeros((H + 2 * border, W + 2 * border), dtype=np.float32)
        dr[border:-border, border:-border] = heatmaps[k].copy()
        # cv2.GaussianBlur(dr, (kernel, kernel), 0): a separable correlation (the kernel is symmetric).
        dr = np.apply_along_axis(lambda r: np.convolve(r, g, mode="same"), 1, dr).astype(np.float32)
        dr = np.apply_along_axis(lambda c: np.convolve(c, g, mode="same"), 0, dr).astype(np.float32)
        heatmaps[k] = dr[border:-border, border:-border].copy()
        heatmaps[k] *= origin_max / np.max(heatmaps[k])
    return heatmaps


def mmpose_dark(heatmaps: np.ndarray, blur_kernel_size: int = 11) -> np.ndarray:
    """MMPose `MSRAHeatmap.decode` with unbiased=True: (K, H, W) -> (K, 2) heatmap-pixel (x, y)."""
    K, H, W = heatmaps.shape
    flat = heatmaps.reshape(K, -1)
    y_locs, x_locs = np.unravel_index(np.argmax(flat, axis=1), shape=(H, W))  # get_heatmap_maximum
    keypoints = np.stack((x_locs, y_locs), axis=-1).astype(np.float32)[None]  # (N = 1, K, 2)
    N = 1
    hm = mmpose_gaussian_blur(heatmaps.astype(np.float32), blur_kernel_size)
    np.maximum(hm, 1e-10, out=hm)
    np.log(hm, out=hm)
    for n, k in product(range(N), range(K)):
        x, y = keypoints[n, k, :2].astype(int)
        if 1 < x < W - 2 and 1 < y < H - 2:
            dx = 0.5 * (hm[k, y, x + 1] - hm[k, y, x - 1])
            dy = 0.5 * (hm[k, y + 1, x] - hm[k, y - 1, x])
            dxx = 0.25 * (hm[k, y, x + 2] - 2 * hm[k, y, x] + hm[k, y, x - 2])
            dxy = 0.25 * (hm[k, y + 1, x + 1] - hm[k, y - 1, x + 1] - hm[k, y + 1, x - 1] + hm[k, y - 1, x - 1])
            dyy = 0.25 * (hm[k, y + 2, x] - 2 * hm[k, y, x] + hm[k, y - 2, x])
            derivative = np.array([[dx], [dy]])
            hessian = np.array([[dxx, dxy], [dxy, dyy]])
            if dxx * dyy - dxy**2 != 0:
                offset = -np.linalg.inv(hessian) @ derivative
                keypoints[n, k, :2] += np.squeeze(np.array(offset.T), axis=0)
    return keypoints[0]


def test_the_reference_kernel_matches_opencvs_rule():
    # k = 11 -> σ = 0.3·(5 − 1) + 0.8 = 2.0; k = 17 -> 0.3·(8 − 1) + 0.8 = 2.9 (MMPose: "17 for σ 3").
    g = cv2_gaussian_kernel(11).astype(np.float64)
    x = np.arange(11) - 5
    assert g.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.sqrt((g * x**2).sum()) == pytest.approx(2.0, rel=0.03)  # truncated at ±2.5σ: a little narrower
    assert g[5] / g[6] == pytest.approx(np.exp(1 / 8), rel=1e-5)  # exp(1 / 2σ²) with σ = 2


def test_both_decode_a_clean_target_exactly():
    # A rendered σ = 3 target, landmarks 20+ px from the border: both recover it (log of a Gaussian is a parabola).
    g = torch.Generator().manual_seed(0)
    coords = 20 + 24 * torch.rand(1, 20, 2, generator=g)
    clean = render_gaussians(coords, torch.full((20,), 3.0), (64, 64))
    ref = mmpose_dark(clean[0].numpy(), 17)
    assert np.abs(ref - coords[0].numpy()).max() < 0.01
    assert (decode_dark(clean, 1, 3.0) - coords).abs().max().item() < 0.01


def _noisy(sigma: float, noise: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n sub-pixel landmarks on 64 × 64 maps at stride 1, target σ, plus N(0, noise²) per pixel (peak 1)."""
    g = torch.Generator().manual_seed(seed)
    coords = 16 + 32 * torch.rand(1, n, 2, generator=g)
    clean = render_gaussians(coords, torch.full((n,), sigma), (64, 64))
    return coords, clean + noise * torch.randn(clean.shape, generator=g)


def test_dark_on_noisy_sigma_3_heatmaps_is_as_good_as_mmposes():
    # The setting: σ = 3 heatmaps with noise 0.1 of the peak. Mean radial error over 200
    # landmarks, measured on this seed: MMPose k = 11 (σ 2, its default) 0.130 px, k = 17 (σ 2.9)
    # 0.107; ours blurring at the target's σ (3) 0.107; ours with the old fixed blur 1.0: 0.271;
    # subpixel (no blur) 0.73.
    coords, noisy = _noisy(3.0, 0.1, 200, seed=1)
    truth = coords[0].numpy()

    def err(xy) -> float:
        return float(np.linalg.norm(np.asarray(xy) - truth, axis=-1).mean())

    ref_11 = err(mmpose_dark(noisy[0].numpy(), 11))
    ref_17 = err(mmpose_dark(noisy[0].numpy(), 17))
    ours = err(decode_dark(noisy, 1, 3.0)[0])
    assert ours <= ref_11 + 0.005, (ours, ref_11)
    assert ours <= ref_17 + 0.005, (ours, ref_17)
    assert ours < 0.11, ours  # the bound: the issue measured 0.107 px with the blur matched to σ
    # What the fix was for: a blur far below σ leaves the noise in, and the error more than doubles.
    assert err(decode_dark(noisy, 1, 1.0)[0]) > 2 * ours
    # And the plain log-parabola, with no blur at all, is far worse on noise.
    assert err(decode_subpixel(noisy)[0]) > 5 * ours


@pytest.mark.parametrize("noise", [0.02, 0.05])
def test_dark_tracks_mmpose_at_lower_noise(noise):
    # Same comparison with less noise; measured: noise 0.02: MMPose k = 17 0.0213 px, ours 0.0212;
    # 0.05: 0.0534, 0.0532.
    coords, noisy = _noisy(3.0, noise, 200, seed=1)
    truth = coords[0].numpy()
    ref_17 = float(np.linalg.norm(mmpose_dark(noisy[0].numpy(), 17) - truth, axis=-1).mean())
    ours = float(np.linalg.norm(decode_dark(noisy, 1, 3.0)[0].numpy() - truth, axis=-1).mean())
    assert ours <= ref_17 * 1.1 + 0.002, (ours, ref_17)
    assert ours < 1.2 * noise, ours


def test_dark_blur_is_in_head_pixels_at_a_coarse_stride():
    # The same noisy σ = 3 head-pixel maps read as a stride-4 head: σ = 12 input px, and DARK must be
    # given 3 (head pixels), not 12, to match; the error scales by the stride (measured 0.426 input px).
    coords, noisy = _noisy(3.0, 0.1, 200, seed=1)
    coords_in = (coords + 0.5) * 4 - 0.5  # heatmap pixel u ↔ input (u + 0.5)·s − 0.5
    err = (decode_dark(noisy, 4, 3.0) - coords_in).norm(dim=-1).mean().item()
    assert err < 0.11 * 4, err
