"""Gaussian heatmap targets and their decoding, sharing one pixel-centre convention.

Convention (used everywhere in the project): a landmark coordinate (x, y) is in input
pixels, with the centre of pixel column j at x = j and of row i at y = i (torchvision's
KeyPoints convention: a horizontal flip maps x to W - 1 - x). A heatmap at output stride s
has its pixel u centred at input coordinate (u + 0.5)·s - 0.5, the align_corners=False
relation of `F.interpolate`. Rendering and decoding both go through `to_input_pixels`.

    coords = torch.tensor([[[12.3, 40.7]]])                      # (B, K, 2)
    h = render_gaussians(coords, torch.tensor([2.0]), (64, 48))  # (B, K, 64, 48)
    decode_argmax(h)                                             # (B, K, 2) -> [[[12., 41.]]]
    decode_subpixel(h)                                           # (B, K, 2) -> [[[12.3, 40.7]]]

σ units (`target.sigma_units`): the schedule's σ is one number per landmark; what it means at a
head of output stride s is a registry, `SIGMA_UNITS`:
    input   σ input pixels at every head: the same blob at every stride (σ/s head pixels).
    head    σ pixels of each head's own map (σ·s input pixels): the coarser the head, the coarser
            its target (farnet §3.4 and the authors' code: σ = 10 at both the half-resolution MSFA
            head and the full-resolution FR head).
`input_sigma` and `head_sigma` convert; the renderer takes input pixels, DARK's blur head pixels.

    input_sigma(torch.tensor([10.0]), stride=2, units="head")    # -> [20.]: input pixels to render with
    head_sigma(torch.tensor([10.0]), stride=2, units="input")    # -> [5.]: DARK's blur at that head

Decoders (`eval.decode`), all `decode(heatmaps, stride, sigma)` with σ the target's σ in that
head's pixels ((K,), (B, K) or a number; only DARK uses it):
    argmax    the maximum's pixel centre.
    subpixel  argmax, then per axis the vertex of the parabola through the log of the maximum
              and its two neighbours: exact for a Gaussian at any σ, whose log is a parabola.
    dark      DARK (Zhang et al., CVPR 2020): blur the heatmap with a Gaussian of the training
              target's σ (DARK modulates with the training data's variance; MMPose's kernel 11 is
              σ 2, 17 is σ 3) to smooth a network's ragged output, then one Newton step on its log from
              the maximum, using the full 2×2 Hessian (the offset is −H⁻¹∇). Exact on a rendered
              target only where the sampled Gaussians are smooth: σ ≥ about 1 head pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# A missing landmark (NaN coordinates) is rendered this far outside the image: its target is
# all zeros, and the losses leave it out through their mask anyway.
_FAR = -1e6


# target.sigma_units: input pixels per unit of σ at a head of output stride s.
SIGMA_UNITS = {
    "input": lambda stride: 1,  # σ in input pixels: the same blob at every stride
    "head": lambda stride: stride,  # σ in the head's own pixels (farnet §3.4): coarser at a coarser head
}


def input_sigma(sigma: Tensor, stride: int, units: str) -> Tensor:
    """The schedule's σ in `units` ((K,) or (B, K)) -> σ in input pixels at a head of this stride, same shape."""
    return sigma * SIGMA_UNITS[units](stride)


def head_sigma(sigma: Tensor, stride: int, units: str) -> Tensor:
    """The schedule's σ in `units` ((K,) or (B, K)) -> σ in that head's pixels, same shape."""
    return sigma * (SIGMA_UNITS[units](stride) / stride)


def sigma_frame(input_size: tuple[int, int], finest_stride: int, units: str) -> tuple[int, int]:
    """(H, W) of the map a σ in `units` is measured on: the input, or the finest head's own map.

    Adaloss's σ0 = 0 is a quarter of its smaller side, so the finest head starts with the same blob
    in either unit: sigma_frame((128, 104), 4, "head") == (32, 26).
    """
    return tuple(n // SIGMA_UNITS[units](finest_stride) for n in input_size)


# A target counts while its Gaussian's ±REACH·σ box overlaps the heatmap (MMPose's rule for
# keypoints outside the heatmap, radius 3σ): beyond it the target is at most e^{-4.5} = 0.011
# on the map, nothing a loss should fit.
REACH = 3.0


def on_map(coords: Tensor, sigma: Tensor, size: tuple[int, int], stride: int = 1) -> Tensor:
    """(B, K) bool: whether each landmark's target reaches the heatmap, i.e. its ±3σ box overlaps
    the map's area, [-0.5, W·s - 0.5] × [-0.5, H·s - 0.5] in input pixels (pixel edges).

    coords: (B, K, 2) (x, y) input pixels; NaN rows (not annotated) are False. sigma: (K,) or
    (B, K), σ in input pixels, as `render_gaussians` takes it. size: (H, W) of the heatmap.
    A face landmark past the photo's border, or one moved off the input by augmentation, has a
    target that misses the map wholly: the losses leave it out, as a missing one.
    """
    h, w = size
    reach = REACH * sigma.to(coords).expand(coords.shape[:2])
    x, y = coords[..., 0], coords[..., 1]  # NaN compares False: a missing landmark is never on the map
    return (x + reach >= -0.5) & (x - reach <= w * stride - 0.5) & (y + reach >= -0.5) & (y - reach <= h * stride - 0.5)


def to_input_pixels(u: Tensor, stride: int) -> Tensor:
    """Heatmap pixel coordinate(s) at output stride s (float, any shape) -> input pixels: (u + 0.5)·s − 0.5."""
    return (u + 0.5) * stride - 0.5


def heatmap_centres(n: int, stride: int, device=None, dtype=torch.float32) -> Tensor:
    """Input-pixel coordinate of each of n heatmap pixel centres, (n,)."""
    return to_input_pixels(torch.arange(n, device=device, dtype=dtype), stride)


def render_gaussians(
    coords: Tensor,
    sigma: Tensor,
    size: tuple[int, int],
    stride: int = 1,
    normalize: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """Unnormalised Gaussians exp(-d²/2σ²) (farnet paper eq 1), separably, in one batched call.

    coords: (B, K, 2) float (x, y) in input pixels, never quantised; NaN rows render as zeros.
    sigma:  (K,) or (B, K) σ in input pixels, so the same σ means the same blob at any stride
            (`input_sigma` turns a σ in head pixels, `target.sigma_units: head`, into this).
    size:   (H, W) of the heatmap (input size // stride).
    normalize: divide each heatmap by its mean (adaloss paper §4.3), so every target carries
            the same mass whatever its σ.
    out:    optional (B, K, H, W) buffer to write into. Reusing one saves the page faults of a
            fresh 100 MB allocation per step on CPU, which cost more than the arithmetic.
    Returns (B, K, H, W) with peak value 1 at the landmark (less when it falls between pixels).
    """
    h, w = size
    coords = torch.nan_to_num(coords, nan=_FAR)
    sigma = sigma.to(coords).expand(coords.shape[:2])  # (B, K)
    xs = heatmap_centres(w, stride, coords.device, coords.dtype)
    ys = heatmap_centres(h, stride, coords.device, coords.dtype)
    two_var = (2 * sigma**2)[..., None]  # (B, K, 1)
    gx = torch.exp(-((xs - coords[..., 0:1]) ** 2) / two_var)  # (B, K, W)
    gy = torch.exp(-((ys - coords[..., 1:2]) ** 2) / two_var)  # (B, K, H)
    if normalize:
        # mean of the outer product = mean(gy)·mean(gx): scale the factors, not the big tensor.
        mass = gy.mean(-1, keepdim=True) * gx.mean(-1, keepdim=True)  # (B, K, 1)
        gx = gx / mass.clamp_min(torch.finfo(coords.dtype).tiny)
    if out is None:
        return gy[..., :, None] * gx[..., None, :]
    return torch.mul(gy[..., :, None], gx[..., None, :], out=out)


class TargetRenderer:
    """`render_gaussians` into buffers kept between calls, one per slot (a model head).

    Each slot's buffer is overwritten by the next call for that slot: a caller must be done with
    a target (its loss backpropagated) before rendering the same slot again. Autograd enforces
    this: an overwritten target that a backward pass still needs raises instead of misleading.

        render = TargetRenderer(normalize=False)
        target = render(coords, sigma, (H, W), stride, slot=0)     # (B, K, H, W)
    """

    def __init__(self, normalize: bool = False):
        self.normalize = normalize
        self._buffers: dict[int, Tensor] = {}

    def __call__(self, coords: Tensor, sigma: Tensor, size: tuple[int, int], stride: int, slot: int = 0) -> Tensor:
        shape = (*coords.shape[:2], *size)
        buf = self._buffers.get(slot)
        if buf is None or buf.shape != shape or buf.device != coords.device or buf.dtype != coords.dtype:
            buf = self._buffers[slot] = torch.empty(shape, device=coords.device, dtype=coords.dtype)
        return render_gaussians(coords, sigma, size, stride, self.normalize, out=buf)


def _argmax(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """(B, K, H, W) -> integer column u and row v of each maximum, (B, K) each."""
    b, k, h, w = heatmaps.shape
    idx = heatmaps.reshape(b, k, h * w).argmax(dim=-1)
    return idx % w, torch.div(idx, w, rounding_mode="floor")


def _to_input(u: Tensor, v: Tensor, stride: int) -> Tensor:
    """Heatmap pixel coordinates (float) -> (…, 2) input-pixel (x, y)."""
    return torch.stack([to_input_pixels(u, stride), to_input_pixels(v, stride)], dim=-1)


def decode_argmax(heatmaps: Tensor, stride: int = 1, sigma: float | Tensor | None = None) -> Tensor:
    """(B, K, H, W) -> (B, K, 2) input-pixel (x, y) of each heatmap's maximum. sigma: unused (see DECODERS)."""
    u, v = _argmax(heatmaps)
    return _to_input(u.to(heatmaps.dtype), v.to(heatmaps.dtype), stride)


def _log_window(heatmaps: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """log of the 3×3 neighbourhood around (u, v), edge-replicated: (B, K, H, W) -> (B, K, 3, 3).

    Values are clamped to a millionth of the peak first, so a neighbour at or below zero (a
    network output) bends the fit hard instead of producing -inf.
    """
    b, k, h, w = heatmaps.shape
    padded = F.pad(heatmaps.reshape(b * k, 1, h, w), (1, 1, 1, 1), mode="replicate").reshape(b, k, h + 2, w + 2)
    d = torch.arange(3, device=heatmaps.device)
    rows = (v[..., None] + d)[..., :, None].expand(b, k, 3, 3)  # padded row of window entry (i, j)
    cols = (u[..., None] + d)[..., None, :].expand(b, k, 3, 3)
    window = padded.reshape(b, k, -1).gather(-1, (rows * (w + 2) + cols).reshape(b, k, 9)).reshape(b, k, 3, 3)
    peak = window[..., 1:2, 1:2].abs().clamp_min(torch.finfo(heatmaps.dtype).tiny)
    return torch.log(torch.maximum(window, peak * 1e-6))


def _parabola_vertex(left: Tensor, centre: Tensor, right: Tensor) -> Tensor:
    """Offset in (-0.5, 0.5) of the vertex of the parabola through (-1, l), (0, c), (1, r); 0 if not a maximum."""
    curvature = left - 2 * centre + right
    offset = 0.5 * (left - right) / torch.where(curvature < 0, curvature, torch.ones_like(curvature))
    return torch.where(curvature < 0, offset, torch.zeros_like(offset)).clamp(-0.5, 0.5)


@torch.no_grad()
def decode_subpixel(heatmaps: Tensor, stride: int = 1, sigma: float | Tensor | None = None) -> Tensor:
    """(B, K, H, W) -> (B, K, 2): argmax refined per axis by a parabola through the log heatmap. sigma: unused.

    For a Gaussian exp(-(x - x0)²/2σ²) the log is exactly a parabola with its vertex at x0, so
    a rendered target decodes back to its landmark (to float precision) at any σ and stride.
    """
    h, w = heatmaps.shape[-2:]
    u, v = _argmax(heatmaps)
    lw = _log_window(heatmaps.float(), u, v)
    du = _parabola_vertex(lw[..., 1, 0], lw[..., 1, 1], lw[..., 1, 2])
    dv = _parabola_vertex(lw[..., 0, 1], lw[..., 1, 1], lw[..., 2, 1])
    # At the border one neighbour is a replica of the centre; the fit there is one-sided, so keep the pixel.
    du = torch.where((u > 0) & (u < w - 1), du, torch.zeros_like(du))
    dv = torch.where((v > 0) & (v < h - 1), dv, torch.zeros_like(dv))
    return _to_input(u + du, v + dv, stride).to(heatmaps.dtype)


def _gaussian_blur(heatmaps: Tensor, sigma: float | Tensor) -> Tensor:
    """Separable Gaussian blur of each (H, W) map with its own σ in heatmap pixels, zero padding; (B, K, H, W).

    sigma: a number, (K,) or (B, K). The kernel has 2⌈3σ⌉ + 1 taps (odd, ±3σ; OpenCV's rule
    σ = 0.3·((k − 1)/2 − 1) + 0.8, which MMPose's kernel sizes follow, gives 2.7σ–3σ), taken for
    the largest σ in the batch and cut at the map's size: taps further out only meet the padding.
    """
    b, k, h, w = heatmaps.shape
    sig = torch.as_tensor(sigma, dtype=heatmaps.dtype, device=heatmaps.device).expand(b, k).reshape(-1, 1)
    sig = sig.clamp_min(1e-3)  # σ → 0 is no blur: the kernel becomes a unit impulse
    r = max(1, min(math.ceil(3 * sig.max().item()), max(h, w) - 1))
    x = torch.arange(-r, r + 1, device=heatmaps.device, dtype=heatmaps.dtype)
    g = torch.exp(-(x**2) / (2 * sig**2))  # (B·K, 2r + 1), one kernel per map
    g = g / g.sum(-1, keepdim=True)
    flat = heatmaps.reshape(1, b * k, h, w)
    flat = F.conv2d(flat, g.view(b * k, 1, 1, -1), padding=(0, r), groups=b * k)
    flat = F.conv2d(flat, g.view(b * k, 1, -1, 1), padding=(r, 0), groups=b * k)
    return flat.reshape(b, k, h, w)


@torch.no_grad()
def decode_dark(heatmaps: Tensor, stride: int, sigma: float | Tensor) -> Tensor:
    """(B, K, H, W) -> (B, K, 2): DARK's distribution-aware decoding (Zhang et al. 2020, eqs 2–7).

    sigma: σ of the modulating blur in heatmap pixels, a number, (K,) or (B, K). DARK modulates
    with the variance of the training targets: the target's σ at this head (`head_sigma`), which
    is what the Scorer passes unless `eval.dark_blur` sets one. The heatmap is blurred and rescaled
    to its former maximum (their "modulation"), then x = m − H⁻¹∇ with the gradient and Hessian of
    the log heatmap at the blurred map's maximum m, by central differences. Offsets are clamped to ±1 px.

    When it is exact: a sampled Gaussian blurred by a sampled Gaussian is again a sampled Gaussian
    (log = parabola, the Newton step lands on the centre) only while both are smooth on the grid,
    σ ≥ about 1 head pixel. Largest error on rendered targets with the matched blur, in head
    pixels (the same at strides 1, 2, 4): σ ≥ 1: < 0.001; σ 0.75: 0.006; 0.5: 0.05; 0.25–0.375:
    0.08–0.09 (the old fixed blur of 1 at σ 0.375: 0.14, i.e. 0.57 input px at stride 4). Below 1
    head pixel prefer `subpixel`, exact on a clean Gaussian at any σ. Within ~3σ of the border the
    zero-padded blur bends the map too.
    """
    h, w = heatmaps.shape[-2:]
    hm = heatmaps.float()
    peak = hm.amax(dim=(-2, -1), keepdim=True)
    blurred = _gaussian_blur(hm, sigma)
    blurred = blurred * peak / blurred.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(hm.dtype).tiny)
    u, v = _argmax(blurred)
    lw = _log_window(blurred, u, v)
    dx = 0.5 * (lw[..., 1, 2] - lw[..., 1, 0])
    dy = 0.5 * (lw[..., 2, 1] - lw[..., 0, 1])
    dxx = lw[..., 1, 2] - 2 * lw[..., 1, 1] + lw[..., 1, 0]
    dyy = lw[..., 2, 1] - 2 * lw[..., 1, 1] + lw[..., 0, 1]
    dxy = 0.25 * (lw[..., 2, 2] - lw[..., 0, 2] - lw[..., 2, 0] + lw[..., 0, 0])
    det = dxx * dyy - dxy**2
    ok = (det > 0) & (dxx < 0) & (u > 0) & (u < w - 1) & (v > 0) & (v < h - 1)  # a proper maximum inside
    safe = torch.where(ok, det, torch.ones_like(det))
    du = torch.where(ok, -(dyy * dx - dxy * dy) / safe, torch.zeros_like(det)).clamp(-1, 1)
    dv = torch.where(ok, -(dxx * dy - dxy * dx) / safe, torch.zeros_like(det)).clamp(-1, 1)
    return _to_input(u + du, v + dv, stride).to(heatmaps.dtype)


# eval.decode. Each is decode(heatmaps (B, K, H, W), stride, sigma) -> (B, K, 2) input-pixel (x, y),
# sigma the target's σ in that head's pixels (a number, (K,) or (B, K)), which only DARK uses.
DECODERS = {"argmax": decode_argmax, "subpixel": decode_subpixel, "dark": decode_dark}
