"""Model registry, keyed by the YAML name `model.name`.

    net = build_model(cfg.model, num_landmarks=19)
"""

from __future__ import annotations

from torch import nn

from trainables.config import ModelConfig
from trainables.models.unet import UNet

MODELS = {"unet": UNet}


def build_model(cfg: ModelConfig, num_landmarks: int, in_channels: int = 1) -> nn.Module:
    return MODELS[cfg.name](in_channels=in_channels, num_landmarks=num_landmarks, width=cfg.width)
