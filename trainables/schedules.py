"""Target σ schedules: small stateful objects stepped once per epoch (`target.schedule`).

    sched = SCHEDULES["adaloss"](cfg.target, num_landmarks=19, input_size=(800, 640))
    sigma = sched.sigma                    # (K,) σ in target.sigma_units for this epoch
    sched.step(per_landmark_loss, loss)    # after each epoch, with that epoch's training losses (K,)
    sched.load_state_dict(sched.state_dict())

A checkpoint holds the state dict, so a resumed trial continues with the same σ and history.

What σ means is `target.sigma_units` (trainables/heatmaps.py): a schedule knows nothing of heads.
With `input` it is input pixels at every head; with `head` it is each head's own pixels, so one
Adaloss σ per landmark widens every head's target in proportion to its stride (σ·s input pixels),
and `sigma`, `sigma0`, `min_sigma` and the reported `target/sigma_<k>` are all in those pixels.
`input_size` is the map σ is measured on: the trainer passes the input size, or with `head` the
finest head's map size (input size // its stride), so σ0 = 0 starts that head's target at a
quarter of its map either way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainables.config import TargetConfig


class FixedSigma:
    """Constant σ for every landmark (`target.sigma`)."""

    def __init__(self, cfg: TargetConfig, num_landmarks: int, input_size: tuple[int, int] = (0, 0)):
        self.sigma = torch.full((num_landmarks,), float(cfg.sigma))

    def step(self, per_landmark_loss: Tensor, train_loss: float) -> Tensor:
        return self.sigma

    def state_dict(self) -> dict:
        return {"sigma": self.sigma.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.sigma = state["sigma"].clone()


class Adaloss:
    """Adaptive per-landmark σ (adaloss paper §3, eqs 1–5), parameters `target.adaloss.*`.

    With H_t = the last w per-landmark losses (eq 2) and V_t their variance (eq 3, divided by w):
        σ_{t+1} = σ_t + ρ·(1 − V_{t−1}/V_t)                              (eq 5)
    A settling loss (V_t < V_{t−1}) shrinks σ. The non-increasing rule: σ may grow (V_t > V_{t−1})
    only when that landmark's training loss rose too (L_t > L_{t−1}); otherwise it stays. We read
    "the training loss" of the paper's §3 as the landmark's own loss, since the rule is per landmark.
    Guards: no update until w + 1 losses exist (V_{t−1} needs them); none while V_t is zero, where
    the ratio is undefined (a loss that has not moved at all); σ never goes below `min_sigma`.
    σ_0 is `sigma0`, or a quarter of the smaller side of `input_size` when 0 (the paper's choice).
    A NaN loss says the landmark had no target all epoch (trainables.objective.EpochLosses: a face
    point off every map): that epoch is skipped for it, its σ and its last w + 1 losses stay.
    """

    def __init__(self, cfg: TargetConfig, num_landmarks: int, input_size: tuple[int, int]):
        p = cfg.adaloss
        self.window, self.rho, self.min_sigma = p.window, p.rho, p.min_sigma
        sigma0 = max(p.sigma0 if p.sigma0 > 0 else min(input_size) / 4, p.min_sigma)
        self.sigma = torch.full((num_landmarks,), float(sigma0))
        # (w + 1, K), each column the landmark's last w + 1 losses, oldest first; NaN = not yet seen
        self.history = torch.full((self.window + 1, num_landmarks), float("nan"), dtype=torch.float64)

    def step(self, per_landmark_loss: Tensor, train_loss: float) -> Tensor:
        """Record this epoch's losses (K,) (NaN: no target, skipped) and return σ for the next epoch (K,)."""
        loss = per_landmark_loss.detach().to("cpu", torch.float64).reshape(-1)
        seen = ~loss.isnan()  # (K,)
        self.history = torch.where(seen, torch.cat([self.history[1:], loss[None]]), self.history)
        ready = seen & ~self.history.isnan().any(dim=0)  # a new loss, and w + 1 of them
        v_prev = self.history[:-1].var(dim=0, unbiased=False)  # V_{t−1}, eq 3 (NaN where not ready)
        v_now = self.history[1:].var(dim=0, unbiased=False)  # V_t
        # Zero variance relative to the losses' scale: the ratio would be noise over noise.
        settled = v_now <= 1e-12 * self.history[1:].mean(dim=0) ** 2
        delta = self.rho * (1 - v_prev / torch.where(settled, 1.0, v_now))
        loss_rose = self.history[-1] > self.history[-2]
        delta = torch.where(~ready | settled | ((delta > 0) & ~loss_rose), 0.0, delta)
        self.sigma = (self.sigma.double() + delta).clamp_min(self.min_sigma).float()
        return self.sigma

    def state_dict(self) -> dict:
        return {"sigma": self.sigma.clone(), "history": self.history.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.sigma = state["sigma"].clone()
        history = state["history"].to(torch.float64)
        # A checkpoint from before NaN padding holds only the losses seen so far (fewer rows): pad on top.
        pad = torch.full((max(0, self.window + 1 - len(history)), history.shape[1]), float("nan"), dtype=torch.float64)
        self.history = torch.cat([pad, history])[-(self.window + 1) :]


SCHEDULES = {"fixed": FixedSigma, "adaloss": Adaloss}


def schedule_problems(cfg: TargetConfig) -> list[str]:
    """What makes a target config unusable, as messages naming the config path."""
    out = []
    if cfg.schedule == "fixed" and not cfg.sigma > 0:
        out.append(f"target.sigma: must be > 0, got {cfg.sigma}")
    if cfg.schedule == "adaloss":
        p = cfg.adaloss
        if p.window < 2:
            out.append(f"target.adaloss.window: needs at least 2 epochs for a variance, got {p.window}")
        if not p.rho > 0:
            out.append(f"target.adaloss.rho: must be > 0, got {p.rho}")
        if p.sigma0 < 0:
            out.append(f"target.adaloss.sigma0: must be > 0, or 0 for a quarter of the input side; got {p.sigma0}")
        if not p.min_sigma > 0:
            out.append(f"target.adaloss.min_sigma: must be > 0, got {p.min_sigma}")
        elif p.sigma0 > 0 and p.sigma0 < p.min_sigma:
            out.append(f"target.adaloss.sigma0: {p.sigma0} is below target.adaloss.min_sigma {p.min_sigma}")
    return out
