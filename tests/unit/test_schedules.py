"""σ schedules (trainables/schedules.py): Adaloss (adaloss paper §3, eqs 1–5) stepped by hand."""

import io
import math

import pytest
import torch

from trainables.config import AdalossConfig, TargetConfig
from trainables.schedules import SCHEDULES, Adaloss, FixedSigma, schedule_problems


def _adaloss(sigma0=16.0, k=1, window=3, rho=0.9, min_sigma=1.0, input_size=(800, 640)) -> Adaloss:
    cfg = TargetConfig(
        schedule="adaloss",
        adaloss=AdalossConfig(window=window, rho=rho, sigma0=sigma0, min_sigma=min_sigma),
    )
    return Adaloss(cfg, num_landmarks=k, input_size=input_size)


def _feed(sched, losses) -> list[list[float]]:
    """Step once per row of losses ((K,) each, or a scalar for K = 1); σ after each step."""
    out = []
    for row in losses:
        per_lm = torch.as_tensor(row, dtype=torch.float32).reshape(-1)
        sigma = sched.step(per_lm, per_lm.mean().item())
        out.append(sigma.tolist())
    return out


def test_registry():
    assert SCHEDULES == {"fixed": FixedSigma, "adaloss": Adaloss}


# ---- FixedSigma ----


def test_fixed_sigma_is_constant_per_landmark():
    sched = FixedSigma(TargetConfig(sigma=2.5), num_landmarks=3)
    assert sched.sigma.shape == (3,)
    assert sched.sigma.tolist() == [2.5, 2.5, 2.5]
    for loss in ([1.0, 2.0, 3.0], [0.1, 5.0, 0.0], [9.0, 9.0, 9.0]):
        assert sched.step(torch.tensor(loss), sum(loss) / 3).tolist() == [2.5, 2.5, 2.5]


def test_fixed_sigma_state_dict_round_trip():
    sched = FixedSigma(TargetConfig(sigma=2.5), num_landmarks=2)
    state = sched.state_dict()
    other = FixedSigma(TargetConfig(sigma=7.0), num_landmarks=2)
    other.load_state_dict(state)
    assert other.sigma.tolist() == [2.5, 2.5]
    state["sigma"].fill_(0)  # the state dict is a copy, not a view of the live σ
    assert sched.sigma.tolist() == [2.5, 2.5]


# ---- Adaloss ----


# w = 3, ρ = 0.9, σ0 = 16. V = population variance (eq 3, divided by w); H_t = last w losses (eq 2).
TRAJECTORY_LOSSES = [1.0, 0.8, 0.7, 0.65, 0.64, 0.5, 0.9]
# epochs 1–3: fewer than w + 1 = 4 losses, so no V_{t−1}: σ = 16, 16, 16.
# epoch 4 (0.65): V_{t−1} = var(1.0, 0.8, 0.7): mean 0.833333, devs² 0.027778 + 0.001111 + 0.017778
#                  = 0.046667 / 3 = 0.015556;  V_t = var(0.8, 0.7, 0.65): mean 0.716667,
#                  devs² 0.006944 + 0.000278 + 0.004444 = 0.011667 / 3 = 0.003889.
#                  ratio 0.015556 / 0.003889 = 4;  σ = 16 + 0.9·(1 − 4) = 16 − 2.7 = 13.3
# epoch 5 (0.64): V_{t−1} = 0.003889;  V_t = var(0.7, 0.65, 0.64): mean 0.663333,
#                  devs² 0.001344 + 0.000178 + 0.000544 = 0.002067 / 3 = 0.000689.
#                  ratio 0.011667 / 0.002067 = 5.645161;  σ = 13.3 + 0.9·(1 − 5.645161) = 13.3 − 4.180645 = 9.119355
# epoch 6 (0.5):  V_t = var(0.65, 0.64, 0.5): mean 0.596667, devs² 0.002844 + 0.001878 + 0.009344
#                  = 0.014067 / 3 = 0.004689 > V_{t−1} = 0.000689: the variance rose, but the loss fell
#                  (0.64 -> 0.5): non-increasing rule, σ stays 9.119355.
# epoch 7 (0.9):  V_t = var(0.64, 0.5, 0.9): mean 0.68, devs² 0.0016 + 0.0324 + 0.0484 = 0.0824 / 3 = 0.027467
#                  > V_{t−1} = 0.004689 and the loss rose (0.5 -> 0.9): σ grows.
#                  ratio 0.014067 / 0.0824 = 0.170712;  σ = 9.119355 + 0.9·(1 − 0.170712) = 9.119355 + 0.746359 = 9.865714
TRAJECTORY_SIGMA = [16.0, 16.0, 16.0, 13.3, 9.119355, 9.119355, 9.865714]


def test_adaloss_trajectory_by_hand():
    sched = _adaloss(sigma0=16.0)
    assert sched.sigma.tolist() == [16.0]
    got = [s[0] for s in _feed(sched, TRAJECTORY_LOSSES)]
    assert got == pytest.approx(TRAJECTORY_SIGMA, abs=2e-5)


def test_adaloss_first_w_epochs_leave_sigma_unchanged_whatever_the_losses():
    # V_{t−1} needs w + 1 losses: with w = 3, three wildly different losses move nothing.
    sched = _adaloss(sigma0=16.0)
    assert [s[0] for s in _feed(sched, [10.0, 0.001, 5.0])] == [16.0, 16.0, 16.0]


def test_adaloss_variance_rises_but_loss_falls_keeps_sigma():
    # Losses 0.5, 0.5, 0.4, then 0.1.
    # V_{t−1} = var(0.5, 0.5, 0.4): mean 0.466667, devs² 0.001111 + 0.001111 + 0.004444 = 0.006667 / 3 = 0.002222
    # V_t = var(0.5, 0.4, 0.1): mean 0.333333, devs² 0.027778 + 0.004444 + 0.054444 = 0.086667 / 3 = 0.028889
    # Eq 5 alone would give σ = 16 + 0.9·(1 − 1/13) = 16.830769, but the loss fell (0.4 -> 0.1): σ stays 16.
    sched = _adaloss(sigma0=16.0)
    assert _feed(sched, [0.5, 0.5, 0.4, 0.1])[-1] == [16.0]


def test_adaloss_variance_and_loss_both_rise_grows_sigma():
    # Losses 0.5, 0.5, 0.4, then 0.8.
    # V_{t−1} = 0.002222 as above; V_t = var(0.5, 0.4, 0.8): mean 0.566667,
    #   devs² 0.004444 + 0.027778 + 0.054444 = 0.086667 / 3 = 0.028889 (the same V_t as the falling case).
    # ratio = 0.006667 / 0.086667 = 1/13 = 0.076923; the loss rose (0.4 -> 0.8), so eq 5 applies:
    # σ = 16 + 0.9·(1 − 0.076923) = 16 + 0.830769 = 16.830769
    sched = _adaloss(sigma0=16.0)
    assert _feed(sched, [0.5, 0.5, 0.4, 0.8])[-1] == pytest.approx([16.830769], abs=1e-5)


def test_adaloss_variance_falls_while_loss_rises_still_shrinks():
    # The rule only blocks increases. Losses 1.0, 0.5, 0.4, then 0.45 (a rise):
    # V_{t−1} = var(1.0, 0.5, 0.4): mean 0.633333, devs² 0.134444 + 0.017778 + 0.054444 = 0.206667 / 3
    # V_t = var(0.5, 0.4, 0.45): mean 0.45, devs² 0.0025 + 0.0025 + 0 = 0.005 / 3
    # ratio = 0.206667 / 0.005 = 41.333333;  σ = 64 + 0.9·(1 − 41.333333) = 64 − 36.3 = 27.7
    sched = _adaloss(sigma0=64.0)
    assert _feed(sched, [1.0, 0.5, 0.4, 0.45])[-1] == pytest.approx([27.7], abs=1e-4)


def test_adaloss_min_sigma_clamp():
    # The same losses from σ0 = 16: 16 − 36.3 = −20.3, clamped to min_sigma = 1.5.
    sched = _adaloss(sigma0=16.0, min_sigma=1.5)
    assert _feed(sched, [1.0, 0.5, 0.4, 0.45])[-1] == [1.5]
    # A further shrink stays clamped: next loss 0.45 -> V_t = var(0.4, 0.45, 0.45) = 0.000556 < V_{t−1} 0.001667.
    assert _feed(sched, [0.45])[-1] == [1.5]


def test_adaloss_variance_from_zero_grows_by_rho_when_loss_rises():
    # Losses 0.3, 0.3, 0.3, then 0.6: V_{t−1} = 0, V_t = var(0.3, 0.3, 0.6): mean 0.4,
    # devs² 0.01 + 0.01 + 0.04 = 0.06 / 3 = 0.02. ratio 0 -> σ = 16 + 0.9·(1 − 0) = 16.9
    sched = _adaloss(sigma0=16.0)
    assert _feed(sched, [0.3, 0.3, 0.3, 0.6])[-1] == pytest.approx([16.9], abs=1e-5)


@pytest.mark.parametrize("value", [0.1, 0.0, 1e-8, 123.456])
def test_adaloss_zero_variance_guard_constant_losses(value):
    # Constant losses: V_t = V_{t−1} = 0 (0/0 in eq 5). 0.1 is not exact in binary, so the float64
    # variance of three copies is ~1e-34 rather than 0; either way σ must stay put and finite.
    sched = _adaloss(sigma0=16.0)
    for s in _feed(sched, [value] * 8):
        assert s == [16.0]


def test_adaloss_zero_variance_guard_when_loss_settles_exactly():
    # 0.9, 0.3, 0.3, 0.3: V_{t−1} = var(0.9, 0.3, 0.3) = 0.08 > 0 but V_t = 0: eq 5's ratio is
    # infinite. The guard leaves σ unchanged rather than returning −inf or NaN.
    sched = _adaloss(sigma0=16.0)
    out = _feed(sched, [0.9, 0.3, 0.3, 0.3, 0.3])
    assert all(math.isfinite(s[0]) for s in out)
    assert out[-2:] == [[16.0], [16.0]]


def test_adaloss_sigma0_zero_is_a_quarter_of_the_smaller_input_side():
    # adaloss paper §3: σ_0 = a quarter of the resolution; input (800, 640) -> 640 / 4 = 160.
    assert _adaloss(sigma0=0.0, k=4, input_size=(800, 640)).sigma.tolist() == [160.0] * 4
    assert _adaloss(sigma0=0.0, k=1, input_size=(256, 512)).sigma.tolist() == [64.0]


def test_adaloss_landmarks_evolve_independently_in_one_call():
    # Landmark 0 follows TRAJECTORY_LOSSES (-> 16, 16, 16, 13.3), landmark 1 the "both rise"
    # sequence 0.5, 0.5, 0.4, 0.8 (-> 16, 16, 16, 16.830769), landmark 2 the "loss falls" one
    # 0.5, 0.5, 0.4, 0.1 (-> stays 16).
    sched = _adaloss(sigma0=16.0, k=3)
    rows = [[1.0, 0.5, 0.5], [0.8, 0.5, 0.5], [0.7, 0.4, 0.4], [0.65, 0.8, 0.1]]
    out = _feed(sched, rows)
    assert out[:3] == [[16.0, 16.0, 16.0]] * 3
    assert out[3] == pytest.approx([13.3, 16.830769, 16.0], abs=1e-5)


def test_adaloss_accepts_a_loss_that_requires_grad():
    sched = _adaloss(sigma0=16.0)
    for loss in TRAJECTORY_LOSSES[:4]:
        sched.step(torch.tensor([loss], requires_grad=True) * 1.0, loss)
    assert sched.sigma.tolist() == pytest.approx([13.3], abs=1e-5)


def test_adaloss_state_dict_round_trip_mid_sequence():
    # Stop after 5 epochs (σ = 9.119355, history holds the last w + 1 = 4 losses), restore into a
    # fresh schedule with a different σ0, and feed both the remaining losses: identical σ.
    first = _adaloss(sigma0=16.0, k=1)
    _feed(first, TRAJECTORY_LOSSES[:5])
    state = first.state_dict()
    second = _adaloss(sigma0=50.0, k=1)
    second.load_state_dict(state)
    assert second.sigma.tolist() == first.sigma.tolist()
    rest = TRAJECTORY_LOSSES[5:]
    assert _feed(second, rest) == _feed(first, rest)
    assert second.sigma.tolist() == pytest.approx([TRAJECTORY_SIGMA[-1]], abs=2e-5)


def test_adaloss_state_dict_is_a_copy():
    sched = _adaloss(sigma0=16.0)
    _feed(sched, TRAJECTORY_LOSSES[:4])
    state = sched.state_dict()
    _feed(sched, TRAJECTORY_LOSSES[4:])
    assert state["sigma"].tolist() == pytest.approx([13.3], abs=1e-5)
    assert state["history"].shape == (4, 1)


def test_adaloss_state_dict_survives_torch_save_weights_only():
    first = _adaloss(sigma0=16.0, k=2)
    rows = [[loss, 1.0 - loss] for loss in TRAJECTORY_LOSSES]
    _feed(first, rows[:4])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    second = _adaloss(sigma0=1.0, k=2)
    second.load_state_dict(state)
    assert _feed(second, rows[4:]) == _feed(first, rows[4:])


# ---- schedule_problems ----


def test_schedule_problems_defaults_are_clean():
    assert schedule_problems(TargetConfig()) == []
    assert schedule_problems(TargetConfig(schedule="adaloss")) == []


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_schedule_problems_fixed_sigma(sigma):
    out = schedule_problems(TargetConfig(schedule="fixed", sigma=sigma))
    assert out == [f"target.sigma: must be > 0, got {sigma}"]


def test_schedule_problems_fixed_sigma_ignored_for_adaloss():
    assert schedule_problems(TargetConfig(schedule="adaloss", sigma=0.0)) == []


@pytest.mark.parametrize(
    "changes, prefix",
    [
        (dict(window=1), "target.adaloss.window:"),
        (dict(window=0), "target.adaloss.window:"),
        (dict(rho=0.0), "target.adaloss.rho:"),
        (dict(rho=-0.5), "target.adaloss.rho:"),
        (dict(rho=float("nan")), "target.adaloss.rho:"),
        (dict(sigma0=-1.0), "target.adaloss.sigma0:"),
        (dict(min_sigma=0.0), "target.adaloss.min_sigma:"),
        (dict(sigma0=0.5, min_sigma=1.0), "target.adaloss.sigma0:"),
    ],
)
def test_schedule_problems_adaloss(changes, prefix):
    out = schedule_problems(TargetConfig(schedule="adaloss", adaloss=AdalossConfig(**changes)))
    assert len(out) == 1, out
    assert out[0].startswith(prefix)
    for value in changes.values():
        assert str(value) in out[0]


def test_schedule_problems_sigma0_below_min_sigma_names_both():
    out = schedule_problems(TargetConfig(schedule="adaloss", adaloss=AdalossConfig(sigma0=0.5, min_sigma=1.0)))
    assert out == ["target.adaloss.sigma0: 0.5 is below target.adaloss.min_sigma 1.0"]


def test_schedule_problems_collects_every_problem():
    cfg = TargetConfig(schedule="adaloss", adaloss=AdalossConfig(window=1, rho=0.0, sigma0=-1.0, min_sigma=0.0))
    assert [m.split(":")[0] for m in schedule_problems(cfg)] == [
        "target.adaloss.window",
        "target.adaloss.rho",
        "target.adaloss.sigma0",
        "target.adaloss.min_sigma",
    ]


# ---- a landmark with no target in an epoch (NaN loss: a face point off every map) ----


def test_adaloss_skips_an_epoch_without_a_target_for_that_landmark_only():
    # Landmark 0 gets TRAJECTORY_LOSSES' first four with NaN epochs between them: NaN leaves its σ and
    # its window as they are, so after 1.0, 0.8, 0.7, 0.65 it reaches 13.3, as with no gap (by hand
    # above). Landmark 1 gets 0.5, 0.5, 0.4, 0.8 then 0.8 with no gap: its σ moves on schedule
    # (16.830769 at its fourth epoch, the "both rise" case above).
    sched = _adaloss(sigma0=16.0, k=2)
    nan = float("nan")
    rows = [[1.0, 0.5], [nan, 0.5], [0.8, 0.4], [nan, 0.8], [0.7, 0.8], [0.65, 0.8]]
    out = _feed(sched, rows)
    assert [s[0] for s in out] == pytest.approx([16.0, 16.0, 16.0, 16.0, 16.0, 13.3], abs=1e-5)
    assert out[3][1] == pytest.approx(16.830769, abs=1e-5)
    assert all(math.isfinite(v) for s in out for v in s)
    assert sched.history[:, 0].tolist() == pytest.approx([1.0, 0.8, 0.7, 0.65])  # no NaN in its window


def test_adaloss_state_dict_from_before_the_nan_padding_still_loads():
    # An older checkpoint holds only the losses seen so far: 2 rows for w = 3. Loaded, it continues as
    # if never saved: 0.7 (three losses, still no update), then 0.65 -> 13.3 (by hand above).
    sched = _adaloss(sigma0=50.0, k=1)
    sched.load_state_dict({"sigma": torch.tensor([16.0]), "history": torch.tensor([[1.0], [0.8]], dtype=torch.float64)})
    assert [s[0] for s in _feed(sched, [0.7, 0.65])] == pytest.approx([16.0, 13.3], abs=1e-5)
