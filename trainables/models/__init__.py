"""Model registry, keyed by the YAML name `model.name`.

Every model maps (B, 1, H, W) normalised grayscale to a list of heatmap tensors, one per head,
coarse to fine, with `model.strides` giving each head's output stride; the last head is the
prediction. Losses add over heads (FARNet's coarse-to-fine supervision).

    net = build_model(cfg.model, num_landmarks=19)
    heads = net(images)                      # [(B, K, H/s, W/s) for s in net.strides]
    model_problems(cfg.model, (800, 640))    # [] when the config can be built; checked before any trial
"""

from __future__ import annotations

from torch import nn

from trainables.config import ModelConfig
from trainables.models.backbones import BACKBONES, weights_problem
from trainables.models.farnet import FARNet, switch_problems
from trainables.models.simple_baseline import SimpleBaseline
from trainables.models.unet import ACTIVATIONS, UNet


def _unet(cfg: ModelConfig, k: int) -> nn.Module:
    return UNet(in_channels=1, num_landmarks=k, width=cfg.width, activation=cfg.activation)


def _farnet(cfg: ModelConfig, k: int) -> nn.Module:
    return FARNet(
        k,
        backbone=cfg.backbone,
        width=cfg.width,
        weights=cfg.weights,
        fusion=cfg.fusion,
        refine=cfg.refine,
        coarse_supervision=cfg.coarse_supervision,
    )


def _simple_baseline(cfg: ModelConfig, k: int) -> nn.Module:
    return SimpleBaseline(k, backbone=cfg.backbone, width=cfg.width, weights=cfg.weights)


MODELS = {"unet": _unet, "farnet": _farnet, "simple_baseline": _simple_baseline}
# H and W must be multiples of: the U-Net pools 3 times, the ImageNet backbones 5 times.
DIVISORS = {"unet": UNet.divisor, "farnet": FARNet.divisor, "simple_baseline": SimpleBaseline.divisor}


def build_model(cfg: ModelConfig, num_landmarks: int) -> nn.Module:
    return MODELS[cfg.name](cfg, num_landmarks)


def model_problems(cfg: ModelConfig, input_size: tuple[int, int]) -> list[str]:
    """What stops this model config from being built, as messages naming the config key."""
    out = []
    h, w = input_size
    d = DIVISORS.get(cfg.name, min(DIVISORS.values()))  # an unknown name is reported by the registry check
    if h <= 0 or w <= 0 or h % d or w % d:
        out.append(f"data.input_size: {[h, w]} must be positive multiples of {d} for model.name {cfg.name}")
    if cfg.name not in MODELS:
        return out
    if not cfg.width > 0:
        out.append(f"model.width: must be > 0, got {cfg.width}")
    # Registry names are checked even where this model ignores them: a typo is a typo (and a
    # searched model.backbone with a unet base must not hide one).
    if cfg.activation not in ACTIVATIONS:
        out.append(f"model.activation: unknown {cfg.activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if cfg.backbone not in BACKBONES:
        out.append(f"model.backbone: unknown {cfg.backbone!r}; choose one of {sorted(BACKBONES)}")
    if cfg.name == "unet":
        if cfg.weights != "none":
            out.append("model.weights: the U-Net has no pretrained weights; use none")
        return out
    if cfg.backbone in BACKBONES:
        problem = weights_problem(cfg.backbone, cfg.weights)  # its messages start with "model.weights:"
        if problem:
            out.append(problem)
    if cfg.name == "farnet":
        out += switch_problems(cfg.fusion, cfg.refine, cfg.coarse_supervision)
    return out
