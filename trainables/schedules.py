"""Target σ schedules: small stateful objects stepped once per epoch.

    sched = SCHEDULES["fixed"](cfg.target, num_landmarks=19)
    sigma = sched.sigma                    # (K,) σ in input pixels for this epoch
    sched.step(per_landmark_loss, loss)    # after each epoch
    sched.load_state_dict(sched.state_dict())
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainables.config import TargetConfig


class FixedSigma:
    """Constant σ for every landmark (`target.sigma`)."""

    def __init__(self, cfg: TargetConfig, num_landmarks: int):
        self.sigma = torch.full((num_landmarks,), float(cfg.sigma))

    def step(self, per_landmark_loss: Tensor, train_loss: float) -> Tensor:
        return self.sigma

    def state_dict(self) -> dict:
        return {"sigma": self.sigma.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.sigma = state["sigma"].clone()


SCHEDULES = {"fixed": FixedSigma}
