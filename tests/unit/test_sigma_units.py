"""σ units per head (`target.sigma_units`): what width each head's target gets, that render and decode
agree at every head in both units, and that DARK is handed σ in the finest head's pixels."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data import DatasetSpec
from trainables.data.dataset import LandmarkDataset
from trainables.data.record import Record
from trainables.heatmaps import decode_dark, decode_subpixel, head_sigma, input_sigma, sigma_frame
from trainables.objective import HeadsLoss, Scorer
from trainables.registry import config_problems
from trainables.schedules import SCHEDULES

H_IN, W_IN = 96, 80  # divisible by every stride below


def _targets(
    units: str,
    strides: tuple[int, ...],
    coords: torch.Tensor,
    sigma: torch.Tensor,
    size: tuple[int, int] = (H_IN, W_IN),
) -> list[torch.Tensor]:
    """The targets an HeadsLoss renders for each head of an input of this size, caught by a loss that records them."""
    cfg = TrialConfig.from_dict({"target": {"sigma_units": units}})
    seen = []

    def spy_loss(pred, target, loss_cfg, valid):
        seen.append(target.clone())
        return torch.zeros(target.shape[1])

    b, k = coords.shape[:2]
    heads = [torch.zeros(b, k, size[0] // s, size[1] // s) for s in strides]
    HeadsLoss(spy_loss, cfg, strides)(heads, coords, sigma)
    return seen


def _second_moment_sigma(heatmap: torch.Tensor) -> tuple[float, float]:
    """(H, W) blob -> its standard deviation along x and y in that map's pixels (mass-weighted)."""
    hm = heatmap.double()
    mass = hm.sum()
    xs = torch.arange(hm.shape[1], dtype=torch.float64)
    ys = torch.arange(hm.shape[0], dtype=torch.float64)
    px, py = hm.sum(0) / mass, hm.sum(1) / mass
    mx, my = (px * xs).sum(), (py * ys).sum()
    return math.sqrt((px * (xs - mx) ** 2).sum()), math.sqrt((py * (ys - my) ** 2).sum())


def _fwhm_x(heatmap: torch.Tensor, row: int) -> float:
    """Full width at half maximum along one row, in that map's pixels (linear interpolation at both flanks)."""
    line = heatmap[row].double().numpy()
    half = line.max() / 2
    above = np.nonzero(line >= half)[0]
    i, j = above[0], above[-1]
    left = i - 1 + (half - line[i - 1]) / (line[i] - line[i - 1])
    right = j + (line[j] - half) / (line[j] - line[j + 1])
    return right - left


# σ = 8 at FARNet's strides (2, 1) and at SimpleBaseline's (4,), on a 256 × 256 input (the widest
# blob, 32 input px, fits ±4σ in the map). By hand, in each head's own pixels:
#   input: σ/s  -> stride 2: 4, stride 1: 8, stride 4: 2
#   head:  σ    -> 8 at every stride (16 input pixels at stride 2, 32 at stride 4)
@pytest.mark.parametrize(
    "units,strides,want_head_px",
    [
        ("input", (2, 1), (4.0, 8.0)),
        ("head", (2, 1), (8.0, 8.0)),
        ("input", (4,), (2.0,)),
        ("head", (4,), (8.0,)),
    ],
)
def test_rendered_width_per_head(units, strides, want_head_px):
    # A landmark at the centre of every map: x = y = (256 − 1)/2 in input pixels is the centre of
    # every head's map too (the pixel-centre convention of trainables/heatmaps.py).
    coords = torch.tensor([[[127.5, 127.5]]])
    targets = _targets(units, strides, coords, torch.tensor([8.0]), (256, 256))
    assert len(targets) == len(strides)
    for target, stride, want in zip(targets, strides, want_head_px):
        assert target.shape == (1, 1, 256 // stride, 256 // stride)
        sx, sy = _second_moment_sigma(target[0, 0])
        # A sampled Gaussian of σ ≥ 1 pixel has second moment σ² to far better than 0.1 %.
        assert sx == pytest.approx(want, rel=1e-3) and sy == pytest.approx(want, rel=1e-3), (stride, sx, sy)
        # FWHM = 2·sqrt(2·ln 2)·σ = 2.3548·σ. Linear interpolation between samples overestimates it
        # (the flank is convex at half maximum): by 2.3 % at σ = 2 px and less above, measured.
        centre_row = target.shape[-2] // 2
        assert _fwhm_x(target[0, 0], centre_row) == pytest.approx(2 * math.sqrt(2 * math.log(2)) * want, rel=0.03)
        # And in input pixels: the same blob at every head with `input`, σ·s with `head`.
        assert sx * stride == pytest.approx(8.0 if units == "input" else 8.0 * stride, rel=1e-3)


def test_sigma_conversions_by_hand():
    sigma = torch.tensor([10.0, 3.0])
    # farnet §3.4 with σ = 10 in head pixels: the MSFA head (stride 2) renders 20 input px, FR (1) 10.
    assert input_sigma(sigma, 2, "head").tolist() == [20.0, 6.0]
    assert input_sigma(sigma, 1, "head").tolist() == [10.0, 3.0]
    assert input_sigma(sigma, 2, "input").tolist() == [10.0, 3.0]
    # In head pixels: input units shrink with the stride, head units do not.
    assert head_sigma(sigma, 2, "input").tolist() == [5.0, 1.5]
    assert head_sigma(sigma, 4, "head").tolist() == [10.0, 3.0]


def _sub_pixel_coords(b: int, k: int, size: int, margin: float, seed: int) -> torch.Tensor:
    """(B, K, 2) sub-pixel (x, y) at least `margin` input pixels inside a size × size input."""
    assert 2 * margin < size - 1
    g = torch.Generator().manual_seed(seed)
    unit = torch.rand(b, k, 2, generator=g, dtype=torch.float64)
    return (margin + unit * (size - 1 - 2 * margin)).float()


# σ ≥ 1 head pixel at every head in both units (where DARK is exact): input units σ 4 and 4.5 input
# px (1 and 1.125 head px at stride 4); head units σ 1.5 and 2 head px (6 and 8 input px at stride 4).
@pytest.mark.parametrize("units,sigma", [("input", (4.0, 4.5)), ("head", (1.5, 2.0))])
@pytest.mark.parametrize("strides", [(2, 1), (4,)])
def test_round_trip_render_decode_per_head(units, sigma, strides):
    # Each head's target decodes back to the landmark with subpixel, and with DARK blurring at the
    # target's own σ in that head's pixels (what the Scorer passes), at sub-pixel positions.
    cfg = TrialConfig.from_dict({"target": {"sigma_units": units}})
    sigma = torch.tensor(sigma)
    heads_loss = HeadsLoss(None, cfg, strides)
    # Kept 3σ (target) + 3σ (blur) + 1 head pixel from the border, where the zero-padded blur bends the map.
    margin = max(6 * input_sigma(sigma, s, units).max().item() + s for s in strides)
    coords = _sub_pixel_coords(3, 2, 128, margin, seed=len(strides) + 10 * (units == "head"))
    for target, stride in zip(_targets(units, strides, coords, sigma, (128, 128)), strides):
        sub = decode_subpixel(target, stride)
        assert (sub - coords).abs().max().item() < 0.01, (stride, (sub - coords).abs().max().item())
        dark = decode_dark(target, stride, heads_loss.head_sigma(sigma, stride))
        assert (dark - coords).abs().max().item() < 0.05, (stride, (dark - coords).abs().max().item())


# --- the Scorer hands DARK σ in the finest head's pixels ------------------------------------------------


class PooledImage(nn.Module):
    """A stride-4 'model': the image averaged over 4×4 blocks, twice (2 landmarks). (B, 1, H, W) -> [(B, 2, H/4, W/4)]."""

    strides = (4,)

    def forward(self, x):
        return [torch.nn.functional.avg_pool2d(x, 4).repeat(1, 2, 1, 1)]


def _dark_sigma_seen(tmp_path, target: dict, dark_blur: float = 0.0):
    from PIL import Image

    img = np.zeros((32, 32), dtype=np.uint8)
    img[10:14, 18:22] = 255
    Image.fromarray(img).save(tmp_path / "0.png")
    ds = LandmarkDataset([Record("0", tmp_path / "0.png", np.array([[20.0, 12.0], [20.0, 12.0]]), 1.0)], (32, 32))
    cfg = TrialConfig.from_dict(
        {
            "target": target,
            "eval": {"decode": "dark", "dark_blur": dark_blur},
            "train": {"batch_size": 1, "device": "cpu"},
        }
    )
    spec = DatasetSpec(records=lambda c, s: [], problems=lambda c: [], flip_index=lambda k: (0, 1))
    scorer = Scorer(cfg, spec, [0, 1], torch.device("cpu"))
    seen = []
    decode = scorer.decode

    def spy(heatmaps, stride, sigma):
        seen.append((stride, sigma))
        return decode(heatmaps, stride, sigma)

    scorer.decode = spy
    heads_loss = HeadsLoss(lambda p, t, c, v: torch.zeros(t.shape[1]), cfg, PooledImage.strides)
    sigma = torch.tensor([2.0, 6.0])  # the schedule's σ this epoch, per landmark
    scorer(PooledImage(), ds, sigma, heads_loss, "val")
    scorer.preview(PooledImage(), ds, torch.zeros(1, 2), 1, heads_loss, sigma)
    return seen


def test_scorer_gives_dark_the_target_sigma_in_head_pixels(tmp_path):
    # σ (2, 6) at stride 4: input units -> (0.5, 1.5) head px; head units -> (2, 6) head px.
    for units, want in [("input", [0.5, 1.5]), ("head", [2.0, 6.0])]:
        seen = _dark_sigma_seen(tmp_path, {"sigma_units": units})
        assert len(seen) == 2  # the split's score and the preview
        for stride, sigma in seen:
            assert stride == 4 and torch.as_tensor(sigma).tolist() == want, units
    # eval.dark_blur overrides it with one σ in head pixels.
    assert [s for _, s in _dark_sigma_seen(tmp_path, {"sigma_units": "head"}, dark_blur=1.25)] == [1.25, 1.25]


# --- the σ frame of Adaloss's σ0, validation ---------------------------------------------------------


def test_adaloss_sigma0_is_a_quarter_of_the_map_sigma_is_measured_on():
    # 128 × 104 input, finest head at stride 4 (SimpleBaseline): input units measure σ on the input
    # (σ0 = 104 / 4 = 26 input px); head units on the 32 × 26 heatmap (σ0 = 26 / 4 = 6.5 head px,
    # = 26 input px: the same starting blob).
    cfg = TrialConfig.from_dict({"target": {"schedule": "adaloss"}})
    assert sigma_frame((128, 104), 4, "input") == (128, 104)
    assert sigma_frame((128, 104), 4, "head") == (32, 26)
    assert sigma_frame((128, 104), 1, "head") == (128, 104)
    ada_input = SCHEDULES["adaloss"](cfg.target, 3, sigma_frame((128, 104), 4, "input"))
    ada_head = SCHEDULES["adaloss"](cfg.target, 3, sigma_frame((128, 104), 4, "head"))
    assert ada_input.sigma.tolist() == [26.0] * 3 and ada_head.sigma.tolist() == [6.5] * 3
    assert input_sigma(ada_head.sigma, 4, "head").tolist() == ada_input.sigma.tolist()


def test_unknown_sigma_units_names_the_key_and_the_choices():
    problems = config_problems(TrialConfig.from_dict({"target": {"sigma_units": "pixels"}}))
    assert [str(p) for p in problems] == ["target.sigma_units: unknown 'pixels'; choose one of ['head', 'input']"]
    problems = config_problems(TrialConfig.from_dict({"eval": {"dark_blur": -1.0}}))
    assert [str(p) for p in problems] == ["eval.dark_blur: must be ≥ 0 (0 = the field's default), got -1.0"]
