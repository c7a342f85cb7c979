"""Heatmap losses (trainables/losses.py): each equation against a value computed by hand."""

import dataclasses
import math

import pytest
import torch

from trainables.config import AWingConfig, LossConfig
from trainables.losses import LOSSES, awing, ewc, loss_problems, mse, per_landmark


def _map(*values) -> torch.Tensor:
    """A (1, 1, 2, 2) map from four values, row-major."""
    return torch.tensor(values, dtype=torch.float64).reshape(1, 1, 2, 2)


def test_registry_names_the_three_losses():
    assert LOSSES == {"mse": mse, "ewc": ewc, "awing": awing}


def test_mse_matches_eq2_by_hand():
    # farnet eq 2: mean over pixels of (y - ŷ)². ŷ = [0.2, 0.0, 0.5, 1.0], y = [1.0, 0.0, 0.0, 0.5]:
    # (0.8)² + 0² + (0.5)² + (0.5)² = 0.64 + 0 + 0.25 + 0.25 = 1.14; / 4 pixels = 0.285.
    out = mse(_map(0.2, 0.0, 0.5, 1.0), _map(1.0, 0.0, 0.0, 0.5), LossConfig(type="mse"))
    assert out.shape == (1,)
    assert out.item() == pytest.approx(0.285, rel=1e-12)


def test_ewc_matches_eq3_by_hand():
    # farnet eq 3: (y - ŷ)² · α^y, α = 40. y = [1, 0.5, 0, 0.25], ŷ = [0.5, 0, 0.3, 0.25]:
    #   (1 - 0.5)²  · 40^1    = 0.25 · 40       = 10
    #   (0.5 - 0)²  · 40^0.5  = 0.25 · 6.324555 = 1.581139
    #   (0 - 0.3)²  · 40^0    = 0.09 · 1        = 0.09
    #   (0.25-0.25)²· 40^0.25 = 0
    # mean over 4 pixels: (10 + 1.581139 + 0.09 + 0) / 4 = 11.671139 / 4 = 2.917785.
    cfg = LossConfig(type="ewc", alpha=40.0)
    out = ewc(_map(0.5, 0.0, 0.3, 0.25), _map(1.0, 0.5, 0.0, 0.25), cfg)
    assert out.item() == pytest.approx(2.917785, abs=1e-6)


def test_ewc_with_alpha_one_is_mse():
    # α = 1: α^y = 1 everywhere, so eq 3 reduces to eq 2.
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    assert torch.allclose(ewc(pred, target, LossConfig(alpha=1.0)), mse(pred, target, LossConfig()))


# AWing (Wang, Bo & Fuxin 2019), defaults ω = 14, θ = 0.5, ε = 1, α = 2.1.
# Far branch, y = 0 (a = α − y = 2.1), θ/ε = 0.5:
#   (θ/ε)^a = 0.5^2.1 = 0.233258,  (θ/ε)^(a−1) = 0.5^1.1 = 0.466516
#   A = ω·a·(θ/ε)^(a−1) / (ε·(1 + (θ/ε)^a)) = 14·2.1·0.466516 / 1.233258 = 13.715585 / 1.233258 = 11.121422
#   C = θ·A − ω·ln(1 + (θ/ε)^a) = 0.5·11.121422 − 14·0.209660 = 5.560711 − 2.935235 = 2.625476
AWING_FAR_Y0_D09 = 11.121422 * 0.9 - 2.625476  # A·d − C at d = 0.9: 10.009280 − 2.625476 = 7.383804
# Near branch, y = 1 (a = 1.1), d = 0.2 < θ: ω·ln(1 + (d/ε)^a) = 14·ln(1 + 0.2^1.1) = 14·ln(1.170268)
#   = 14·0.157233 = 2.201259
AWING_NEAR_Y1_D02 = 2.201259


def test_awing_near_branch_by_hand():
    out = awing(_map(0.8, 0.8, 0.8, 0.8), _map(1.0, 1.0, 1.0, 1.0), LossConfig(type="awing"))
    assert out.item() == pytest.approx(AWING_NEAR_Y1_D02, abs=1e-5)


def test_awing_far_branch_by_hand():
    out = awing(_map(0.9, 0.9, 0.9, 0.9), _map(0.0, 0.0, 0.0, 0.0), LossConfig(type="awing"))
    assert out.item() == pytest.approx(AWING_FAR_Y0_D09, abs=1e-5)


def test_awing_mixes_branches_per_pixel():
    # Two pixels of each case above: mean = (2.201259 + 7.383804) / 2 = 4.792531.
    out = awing(_map(0.8, 0.9, 0.8, 0.9), _map(1.0, 0.0, 1.0, 0.0), LossConfig(type="awing"))
    assert out.item() == pytest.approx(4.792531, abs=1e-5)


def test_awing_far_branch_sign_of_error_does_not_matter():
    # d = |y − ŷ|: ŷ = −0.9 against y = 0 is the same d = 0.9 as ŷ = 0.9.
    out = awing(_map(-0.9, -0.9, -0.9, -0.9), _map(0.0, 0.0, 0.0, 0.0), LossConfig(type="awing"))
    assert out.item() == pytest.approx(AWING_FAR_Y0_D09, abs=1e-5)


@pytest.mark.parametrize("y", [0.0, 0.3, 0.7, 1.0])
def test_awing_is_continuous_in_value_and_slope_at_theta(y):
    # Both branches meet at d = θ: ω·ln(1 + (θ/ε)^a) = θ·A − C by construction of C. Check it
    # numerically from both sides: d = θ − δ (near) and θ + δ (far), δ = 1e-7, in float64.
    # The gap must be about 2δ·slope (slope at θ is A ≤ ~12), not a jump.
    cfg = LossConfig(type="awing")
    theta, delta = cfg.awing.theta, 1e-7
    target = torch.full((1, 1, 1, 1), y, dtype=torch.float64)
    below = awing(target + (theta - delta), target, cfg).item()
    at = awing(target + theta, target, cfg).item()
    above = awing(target + (theta + delta), target, cfg).item()
    assert abs(at - below) < 20 * delta
    assert abs(above - at) < 20 * delta
    # Slope from each side (one-sided differences) agrees too: equal derivative at θ.
    h = 1e-5
    left = (awing(target + (theta - h), target, cfg).item() - awing(target + (theta - 2 * h), target, cfg).item()) / h
    right = (awing(target + (theta + 2 * h), target, cfg).item() - awing(target + (theta + h), target, cfg).item()) / h
    assert left == pytest.approx(right, rel=1e-3)


def test_awing_gradient_is_finite_at_zero_error():
    # d = 0 for every pixel, y in {0, 0.5, 1} so the exponent a = α − y spans 2.1 .. 1.1 (> 1):
    # d/dd ω·ln(1 + d^a) = ω·a·d^(a−1)/(1 + d^a) = 0 at d = 0; abs() gives 0 there too.
    target = _map(0.0, 0.5, 1.0, 0.25)
    pred = target.clone().requires_grad_(True)
    loss = awing(pred, target, LossConfig(type="awing")).sum()
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(pred.grad).all()
    assert torch.equal(pred.grad.abs(), torch.zeros_like(pred.grad))


def test_awing_gradient_is_finite_in_both_branches():
    target = torch.tensor([0.0, 0.5, 1.0, 0.0, 1.0], dtype=torch.float64).reshape(1, 1, 1, 5)
    pred = (
        target + torch.tensor([0.1, -0.3, 0.49, 0.9, -2.0], dtype=torch.float64).reshape(1, 1, 1, 5)
    ).requires_grad_(True)
    awing(pred, target, LossConfig(type="awing")).sum().backward()
    assert torch.isfinite(pred.grad).all()


# ---- reduction per landmark and the `valid` mask ----


def _two_by_two():
    # 1×1 maps, B = 2 images, K = 2 landmarks; ŷ = 0, y = [[1, 2], [3, 4]] -> squared errors [[1, 4], [9, 16]].
    pred = torch.zeros(2, 2, 1, 1)
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
    return pred, target


def test_per_landmark_reduction_returns_k_values_by_hand():
    # Landmark 0: (1 + 9) / 2 = 5; landmark 1: (4 + 16) / 2 = 10.
    pred, target = _two_by_two()
    out = mse(pred, target, LossConfig())
    assert out.shape == (2,)
    assert out.tolist() == [5.0, 10.0]


def test_per_landmark_mean_is_eq2_overall_mean_without_mask():
    # farnet eq 2 divides the sum over K, W, H by KWH; the mean of the (K,) vector is that number
    # (averaged over the batch too).
    torch.manual_seed(1)
    pred, target = torch.rand(3, 4, 5, 6), torch.rand(3, 4, 5, 6)
    assert mse(pred, target, LossConfig()).mean().item() == pytest.approx(
        ((pred - target) ** 2).mean().item(), rel=1e-6
    )


def test_per_landmark_averages_over_pixels_then_valid_images():
    # Landmark 0 on a 1×2 map: image 0 errors (1, 3) -> mean 2; image 1 (missing) errors (100, 100).
    # valid = [[True], [False]] -> landmark 0 = 2 (image 1 adds nothing, and its count is not in the divisor).
    loss_map = torch.tensor([1.0, 3.0, 100.0, 100.0]).reshape(2, 1, 1, 2)
    assert per_landmark(loss_map, torch.tensor([[True], [False]])).tolist() == [2.0]
    assert per_landmark(loss_map, None).tolist() == [51.0]  # (2 + 100) / 2


@pytest.mark.parametrize("name", ["mse", "ewc", "awing"])
def test_missing_landmark_adds_nothing(name):
    # valid[1, 0] = False: landmark 0 averages image 0 only: mse 1 (not 5); landmark 1 still (4 + 16)/2.
    pred, target = _two_by_two()
    cfg = LossConfig(type=name)
    valid = torch.tensor([[True, True], [False, True]])
    out = LOSSES[name](pred, target, cfg, valid)
    only_image0 = LOSSES[name](pred[:1, :1], target[:1, :1], cfg)
    both_lm1 = LOSSES[name](pred[:, 1:], target[:, 1:], cfg)
    assert out[0].item() == pytest.approx(only_image0.item())
    assert out[1].item() == pytest.approx(both_lm1.item())
    if name == "mse":
        assert out.tolist() == [1.0, 10.0]


def test_landmark_missing_everywhere_gives_zero_not_nan():
    pred, target = _two_by_two()
    valid = torch.tensor([[False, True], [False, True]])
    out = mse(pred, target, LossConfig(), valid)
    assert out.tolist() == [0.0, 10.0]


@pytest.mark.parametrize("name", ["mse", "ewc", "awing"])
def test_nan_target_of_a_missing_landmark_does_not_leak_into_the_value(name):
    pred, target = _two_by_two()
    target[1, 0] = float("nan")
    valid = torch.tensor([[True, True], [False, True]])
    out = LOSSES[name](pred, target, LossConfig(type=name), valid)
    assert torch.isfinite(out).all()
    clean = LOSSES[name](pred[:1, :1], target[:1, :1], LossConfig(type=name))
    assert out[0].item() == pytest.approx(clean.item())


@pytest.mark.parametrize("name", ["mse", "ewc", "awing"])
def test_nan_target_of_a_missing_landmark_does_not_leak_into_the_gradient(name):
    # per_landmark uses torch.where "because a missing landmark's map may hold NaN from a NaN
    # target". where() zeroes that image's gradient, but the chain rule then multiplies the zero by
    # d(loss_map)/d(pred), which is NaN at a NaN target (2·(ŷ − NaN)·0 = NaN): the masked image
    # sends NaN into pred.grad, and from there into every weight.
    # Expected: pred.grad finite, zero for the masked (image 1, landmark 0).
    pred, target = _two_by_two()
    pred.requires_grad_(True)
    target[1, 0] = float("nan")
    valid = torch.tensor([[True, True], [False, True]])
    LOSSES[name](pred, target, LossConfig(type=name), valid).sum().backward()
    assert torch.isfinite(pred.grad).all(), pred.grad.flatten().tolist()
    assert pred.grad[1, 0].abs().sum().item() == 0.0


# ---- loss_problems ----


def test_loss_problems_defaults_are_clean():
    for name in LOSSES:
        assert loss_problems(LossConfig(type=name), normalize_targets=False) == []
    assert loss_problems(LossConfig(type="mse"), normalize_targets=True) == []


@pytest.mark.parametrize("name", ["ewc", "awing"])
def test_loss_problems_reject_normalized_targets_for_ewc_and_awing(name):
    out = loss_problems(LossConfig(type=name), normalize_targets=True)
    assert len(out) == 1
    assert out[0].startswith("target.normalize:") and "mse" in out[0] and name in out[0]


@pytest.mark.parametrize("alpha", [0.5, 0.0, -2.0, float("nan")])
def test_loss_problems_ewc_alpha_below_one(alpha):
    out = loss_problems(LossConfig(type="ewc", alpha=alpha), normalize_targets=False)
    assert len(out) == 1
    assert out[0].startswith("loss.alpha:") and "α ≥ 1" in out[0]


def test_loss_problems_ewc_alpha_ignored_for_other_losses():
    assert loss_problems(LossConfig(type="mse", alpha=0.5), normalize_targets=False) == []


@pytest.mark.parametrize("alpha", [1.0, 0.5, float("nan")])
def test_loss_problems_awing_alpha_must_exceed_one(alpha):
    cfg = LossConfig(type="awing", awing=AWingConfig(alpha=alpha))
    out = loss_problems(cfg, normalize_targets=False)
    assert len(out) == 1
    assert out[0].startswith("loss.awing.alpha:") and "> 1" in out[0] and str(alpha) in out[0]


@pytest.mark.parametrize("field", ["omega", "theta", "epsilon"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_loss_problems_awing_positive_parameters(field, value):
    cfg = LossConfig(type="awing", awing=dataclasses.replace(AWingConfig(), **{field: value}))
    out = loss_problems(cfg, normalize_targets=False)
    assert out == [f"loss.awing.{field}: must be > 0, got {value}"]


def test_loss_problems_collects_every_problem():
    cfg = LossConfig(type="awing", awing=AWingConfig(omega=0.0, theta=-1.0, epsilon=0.0, alpha=1.0))
    out = loss_problems(cfg, normalize_targets=True)
    assert [m.split(":")[0] for m in out] == [
        "target.normalize",
        "loss.awing.omega",
        "loss.awing.theta",
        "loss.awing.epsilon",
        "loss.awing.alpha",
    ]


def test_hand_constants_agree_with_the_formula():
    # Guard against an arithmetic slip in the hand values above (not a test of the code).
    a, r = 2.1, 0.5
    big_a = 14 * a * r ** (a - 1) / (1 + r**a)
    big_c = 0.5 * big_a - 14 * math.log1p(r**a)
    assert big_a * 0.9 - big_c == pytest.approx(AWING_FAR_Y0_D09, abs=1e-5)
    assert 14 * math.log1p(0.2**1.1) == pytest.approx(AWING_NEAR_Y1_D02, abs=1e-6)


# ---- a target that misses the heatmap (a face point past the photo's border) ----


def _heads_loss(input_size=(8, 8), sigma_units="input"):
    from trainables.config import TrialConfig
    from trainables.objective import HeadsLoss

    cfg = TrialConfig.from_dict(
        {"data": {"input_size": list(input_size)}, "loss": {"type": "mse"}, "target": {"sigma_units": sigma_units}}
    )
    return HeadsLoss(mse, cfg, (1,))


def test_on_map_is_the_3_sigma_box_overlapping_the_map_edges():
    from trainables.heatmaps import on_map

    # 8×8 map at stride 1, σ = 1: the map spans [-0.5, 7.5] in x and y; a target counts while
    # x + 3σ >= -0.5 and x - 3σ <= 7.5 (and the same in y).
    xs = [-3.5, -3.6, 10.5, 10.6, 3.0, -10.5, float("nan")]
    coords = torch.tensor([[[x, 4.0] for x in xs]])
    assert on_map(coords, torch.tensor([1.0]), (8, 8)).tolist() == [[True, False, True, False, True, False, False]]
    # The same points against a 4×4 map at stride 2: the same area, so the same answers.
    assert on_map(coords, torch.tensor([1.0]), (4, 4), stride=2).tolist() == [
        [True, False, True, False, True, False, False]
    ]
    # In y too: (4, -3.6) misses, (4, 10.5) touches.
    assert on_map(torch.tensor([[[4.0, -3.6], [4.0, 10.5]]]), torch.tensor([1.0]), (8, 8)).tolist() == [[False, True]]


def test_a_target_10_sigma_off_the_map_adds_exactly_nothing_by_hand():
    # 8×8 input, one head at stride 1, σ = 1, mse, the prediction 0 for landmark 0 and 0.5 for landmark 1.
    # Landmark 0 at (3, 4): its target is exp(-d²/2), squared exp(-d²), separable:
    #   Σ_x exp(-(x-3)²), x = 0..7: e⁻⁹ + e⁻⁴ + e⁻¹ + 1 + e⁻¹ + e⁻⁴ + e⁻⁹ + e⁻¹⁶ = 1.772637
    #   Σ_y exp(-(y-4)²), y = 0..7: the same terms               = 1.772637
    #   loss = 1.772637² / 64 pixels = 3.142242 / 64 = 0.049098
    # Landmark 1 at (-10.5, 4): 10σ left of the map's edge at -0.5; its target is at most e⁻⁵⁰ ≈ 2e-22,
    # so without the mask it would cost (0.5 - 0)² = 0.25 a pixel; it costs exactly 0.
    heads_loss = _heads_loss()
    coords = torch.tensor([[[3.0, 4.0], [-10.5, 4.0]]])
    pred = torch.zeros(1, 2, 8, 8)
    pred[0, 1] = 0.5
    out = heads_loss([pred], coords, torch.tensor([1.0, 1.0]))
    assert out[0].item() == pytest.approx(0.049098, abs=1e-6)
    assert out[1].item() == 0.0
    assert heads_loss.targeted(coords, torch.tensor([1.0, 1.0])).tolist() == [[True, False]]
    # The prediction for it gets no gradient either: nothing pulls the network towards a target it cannot see.
    pred.requires_grad_(True)
    heads_loss([pred], coords, torch.tensor([1.0, 1.0])).sum().backward()
    assert pred.grad[0, 1].abs().sum().item() == 0.0 and pred.grad[0, 0].abs().sum().item() > 0


def test_a_target_off_the_map_in_one_image_is_averaged_over_the_others():
    # Landmark 0 at (3, 4) in image 0 and at (-10.5, 4) in image 1, prediction 0 in both:
    # the mean is over image 0 alone, 0.049098 (as above), not (0.049098 + ~0) / 2.
    heads_loss = _heads_loss()
    coords = torch.tensor([[[3.0, 4.0]], [[-10.5, 4.0]]])
    out = heads_loss([torch.zeros(2, 1, 8, 8)], coords, torch.tensor([1.0]))
    assert out.item() == pytest.approx(0.049098, abs=1e-6)


def test_a_wider_coarse_target_still_counts_where_the_fine_one_misses():
    # target.sigma_units: head, σ = 1 at a head of stride 2 is 2 input pixels: reach 6. A landmark
    # at x = -6 reaches the coarse map (-6 + 6 >= -0.5) but not a stride-1 map with σ 1 (reach 3).
    from trainables.config import TrialConfig
    from trainables.objective import HeadsLoss

    cfg = TrialConfig.from_dict({"data": {"input_size": [8, 8]}, "target": {"sigma_units": "head"}})
    heads_loss = HeadsLoss(mse, cfg, (2, 1))
    coords = torch.tensor([[[-6.0, 4.0]]])
    assert heads_loss.targeted(coords, torch.tensor([1.0])).tolist() == [[True]]
    assert HeadsLoss(mse, cfg, (1,)).targeted(coords, torch.tensor([1.0])).tolist() == [[False]]


def test_epoch_losses_average_each_landmark_over_the_images_it_counted_in():
    from trainables.objective import EpochLosses

    # Batch 1 (2 images): landmark 0 counted in both, batch loss 0.4; landmark 1 in one, 1.0; landmark 2 in none, 0.
    # Batch 2 (2 images): landmark 0 in one, 0.1; landmark 1 in none, 0; landmark 2 in none, 0.
    # landmark 0: (0.4·2 + 0.1·1) / 3 = 0.9 / 3 = 0.3   (the plain batch mean would say 0.25)
    # landmark 1: (1.0·1) / 1 = 1.0                      (the plain batch mean would say 0.5)
    # landmark 2: no target all epoch: NaN, which Adaloss skips
    epoch = EpochLosses(3, "cpu")
    epoch.add(torch.tensor([0.4, 1.0, 0.0]), torch.tensor([[True, True, False], [True, False, False]]))
    epoch.add(torch.tensor([0.1, 0.0, 0.0]), torch.tensor([[False, False, False], [True, False, False]]))
    out = epoch.result()
    assert out.shape == (3,) and out.dtype == torch.float32
    assert out[:2].tolist() == pytest.approx([0.3, 1.0], abs=1e-7) and math.isnan(out[2].item())
    assert epoch.finite()
    epoch.add(torch.tensor([float("nan"), 0.0, 0.0]), torch.tensor([[True, False, False]]))
    assert not epoch.finite()  # a NaN where a landmark counted: the trial diverged
