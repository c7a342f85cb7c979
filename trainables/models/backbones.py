"""Torchvision backbones with their feature taps, defined once per family; registry keyed by `model.backbone`.

A Backbone takes our grayscale input (B, 1, H, W), H and W divisible by 32, and returns
Features: levels [C1..C5] at strides 2, 4, 8, 16, 32 (farnet paper §3.1: C1 is the stem
conv's output, C2..C5 the last layer of stages 2..5) and, for VGG, l0 at stride 1.

    net = build_backbone("densenet121")              # weights: none | imagenet | <path>
    f = net(torch.zeros(2, 1, 64, 64))
    [t.shape[1] for t in f.levels]                   # [64, 256, 512, 1024, 1024] == net.channels
    net.classify(f.levels[-1]).shape                 # (2, 1000): the ImageNet head, kept for distillation

VGG has no stride-2 stem: its five conv blocks sit at strides 1..16, i.e. levels L0..L4 (farnet §4.3),
so l0 = block 1, C1..C4 = blocks 2..5, and C5 = block 5 max-pooled, which is what its classifier reads.

The input is undone from our normalisation ((x01 - PIXEL_MEAN) / PIXEL_STD, trainables/data/dataset.py),
repeated to RGB and normalised with ImageNet's mean/std, the inputs torchvision's weights expect
(FARNet's public code applied ImageNet mean/std to 0-255 values; DESIGN.md "Pitfalls").

A Backbone registers the torchvision model's own modules under their own names, so its
state_dict() *is* a torchvision state dict (keys like "layer1.0.conv1.weight"). A weights file
may therefore be either; besides, a trial checkpoint ({"model": ...}) and a state dict of a model
that holds a Backbone as `.backbone` (e.g. SimpleBaseline) are accepted, their backbone part used.
The classifier head comes frozen (requires_grad False): heatmap models never use it in forward, and
DistributedDataParallel fails on trainable parameters that get no gradient. To train it (e.g. L_CD),
call `backbone.classifier_head().requires_grad_(True)`.

"imagenet" weights are only ever read from the local torch hub cache, never downloaded. Every
problem is a ValueError with one line that names the field (model.backbone / model.weights) and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from torchvision import models as tvm
    from torchvision.models import WeightsEnum

from trainables.data.dataset import PIXEL_MEAN, PIXEL_STD
from trainables.problems import Problem

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's old DenseNet parameter names ("denselayer1.norm.1.weight"), renamed by _read_weights.
_DENSE_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


@dataclass
class Features:
    levels: list[Tensor]  # [C1, C2, C3, C4, C5], (B, channels[i], H/stride[i], W/stride[i])
    l0: Tensor | None  # VGG: block 1 at stride 1, (B, 64, H, W); None for other families


class Backbone(nn.Module):
    """Base: input conversion and the attributes every family sets; subclasses define the taps."""

    strides = (2, 4, 8, 16, 32)  # of C1..C5 w.r.t. the input
    name: str
    channels: tuple[int, int, int, int, int]  # of C1..C5
    l0_channels: int | None = None  # VGG only

    def __init__(self, name: str, net: nn.Module):
        super().__init__()
        self.name = name
        for child_name, child in net.named_children():  # same keys as the torchvision model
            self.add_module(child_name, child)
        # ours -> [0, 1] -> ImageNet, per RGB channel: x01 = x·PIXEL_STD + PIXEL_MEAN, (x01 - m) / s.
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("in_scale", (PIXEL_STD / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((PIXEL_MEAN - mean) / std).view(1, 3, 1, 1), persistent=False)

    def to_imagenet(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) in our normalisation -> (B, 3, H, W) in ImageNet's."""
        return x * self.in_scale + self.in_shift

    def forward(self, x: Tensor) -> Features:
        raise NotImplementedError

    def classify(self, c5: Tensor) -> Tensor:
        """C5 -> (B, 1000) logits through the family's ImageNet classifier head."""
        raise NotImplementedError

    def classifier_head(self) -> nn.Module:
        """The parameters classify() uses beyond C5 (fc or classifier)."""
        raise NotImplementedError


class ResNetBackbone(Backbone):
    """C1 = relu(bn1(conv1)) before the max-pool; C2..C5 = layer1..layer4."""

    def __init__(self, name: str, net: tvm.ResNet):
        super().__init__(name, net)
        last = [layer[-1] for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]
        self.channels = (net.bn1.num_features, *(_block_out(b) for b in last))

    def forward(self, x: Tensor) -> Features:
        c1 = self.relu(self.bn1(self.conv1(self.to_imagenet(x))))
        c2 = self.layer1(self.maxpool(c1))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return Features([c1, c2, c3, c4, c5], None)

    def classify(self, c5: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(c5), 1))

    def classifier_head(self) -> nn.Module:
        return self.fc


class DenseNetBackbone(Backbone):
    """C1 = relu0(norm0(conv0)) before pool0; C2..C4 = denseblock1..3 before each transition;
    C5 = norm5(denseblock4)."""

    def __init__(self, name: str, net: tvm.DenseNet):
        super().__init__(name, net)
        f = net.features
        self.channels = (
            f.norm0.num_features,
            f.transition1.norm.num_features,
            f.transition2.norm.num_features,
            f.transition3.norm.num_features,
            f.norm5.num_features,
        )

    def forward(self, x: Tensor) -> Features:
        f = self.features
        c1 = f.relu0(f.norm0(f.conv0(self.to_imagenet(x))))
        c2 = f.denseblock1(f.pool0(c1))
        c3 = f.denseblock2(f.transition1(c2))
        c4 = f.denseblock3(f.transition2(c3))
        c5 = f.norm5(f.denseblock4(f.transition3(c4)))
        return Features([c1, c2, c3, c4, c5], None)

    def classify(self, c5: Tensor) -> Tensor:
        out = F.adaptive_avg_pool2d(F.relu(c5), (1, 1))  # not in place: c5 belongs to the caller
        return self.classifier(torch.flatten(out, 1))

    def classifier_head(self) -> nn.Module:
        return self.classifier


class VGGBackbone(Backbone):
    """Blocks end before each max-pool: l0 = block 1, C1..C4 = blocks 2..5, C5 = pool(block 5)."""

    def __init__(self, name: str, net: tvm.VGG):
        super().__init__(name, net)
        convs, blocks = [], []
        for m in net.features:
            if isinstance(m, nn.Conv2d):
                convs.append(m.out_channels)
            elif isinstance(m, nn.MaxPool2d):
                blocks.append(convs[-1])
        self.l0_channels = blocks[0]
        self.channels = (*blocks[1:], blocks[-1])

    def forward(self, x: Tensor) -> Features:
        x = self.to_imagenet(x)
        taps = []
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                taps.append(x)
            x = m(x)
        return Features([*taps[1:], x], taps[0])

    def classify(self, c5: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(c5), 1))

    def classifier_head(self) -> nn.Module:
        return self.classifier


def _block_out(block: nn.Module) -> int:
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features  # Bottleneck | BasicBlock


class BackboneSpec(NamedTuple):
    builder: str  # torchvision.models.<builder>, called with weights=None
    weights: str  # torchvision.models.<Enum>.<member>: the weights "imagenet" means (torchvision's DEFAULT)
    family: type[Backbone]

    @property
    def build(self) -> Callable[..., nn.Module]:
        return getattr(_torchvision_models(), self.builder)

    @property
    def imagenet(self) -> WeightsEnum:
        enum, member = self.weights.split(".")
        return getattr(getattr(_torchvision_models(), enum), member)


def _torchvision_models():
    # Imported on first use, not with this module: `import torchvision.models` takes seconds (3.2-5.4 s
    # at load 4-5 on the 2-core machine), which every Train worker paid at its start, and a U-Net
    # never needs it (benchmarks/README.md, per-trial start-up).
    from torchvision import models

    return models


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("vgg16", "VGG16_Weights.IMAGENET1K_V1", VGGBackbone),
    "vgg19": BackboneSpec("vgg19", "VGG19_Weights.IMAGENET1K_V1", VGGBackbone),
    "resnet18": BackboneSpec("resnet18", "ResNet18_Weights.IMAGENET1K_V1", ResNetBackbone),
    "resnet34": BackboneSpec("resnet34", "ResNet34_Weights.IMAGENET1K_V1", ResNetBackbone),
    "resnet50": BackboneSpec("resnet50", "ResNet50_Weights.IMAGENET1K_V2", ResNetBackbone),
    "resnet101": BackboneSpec("resnet101", "ResNet101_Weights.IMAGENET1K_V2", ResNetBackbone),
    "resnet152": BackboneSpec("resnet152", "ResNet152_Weights.IMAGENET1K_V2", ResNetBackbone),
    "densenet121": BackboneSpec("densenet121", "DenseNet121_Weights.IMAGENET1K_V1", DenseNetBackbone),
    "densenet169": BackboneSpec("densenet169", "DenseNet169_Weights.IMAGENET1K_V1", DenseNetBackbone),
}


def build_backbone(name: str, weights: str = "none") -> Backbone:
    """weights: "none" (random init), "imagenet" (local torch hub cache only) or a state-dict path."""
    spec = _spec(name)
    net = spec.build(weights=None)
    if weights != "none":
        state = _read_weights(name, weights)
        expected = net.state_dict()
        problem = _mismatch(expected, state)
        if problem:
            raise ValueError(_path_problem(name, weights, problem, next(iter(expected))))
        net.load_state_dict(state)
    backbone = spec.family(name, net)
    backbone.classifier_head().requires_grad_(False)  # see the module docstring
    return backbone


class MissingWeights(ValueError):
    """The weights file is not on this machine (a dry run tolerates that; a real run does not)."""


def weights_problem(name: str, weights: str) -> Problem | None:
    """None when build_backbone(name, weights) can load the weights, else a one-line fix."""
    try:
        spec = _spec(name)
        if weights == "none":
            return None
        state = _read_weights(name, weights)
        with torch.device("meta"):  # the expected keys and shapes, without allocating a model
            expected = spec.build(weights=None).state_dict()
    except MissingWeights as err:
        found = Problem.of(str(err))
        return Problem(found.path, found.message, Problem.MISSING)
    except ValueError as err:
        return Problem.of(str(err))
    problem = _mismatch(expected, state)
    return Problem.of(_path_problem(name, weights, problem, next(iter(expected)))) if problem else None


def imagenet_file(name: str) -> Path:
    """Where torchvision would cache `name`'s ImageNet weights: <torch hub dir>/checkpoints/<url basename>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_spec(name).imagenet.url).name


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"model.backbone: unknown {name!r}; choose one of {sorted(BACKBONES)}") from None


def _read_weights(name: str, weights: str) -> dict[str, Tensor]:
    """Read the weights file for "imagenet" or a path -> a torchvision-keyed state dict."""
    if weights == "imagenet":
        path = imagenet_file(name)
        if not path.is_file():
            enum = _spec(name).imagenet
            raise MissingWeights(
                f"model.weights: imagenet weights for {name} are not in the torch hub cache; "
                f"put {path.name} in {path.parent}/ (torchvision's {type(enum).__name__}."
                f"{enum.name}, {enum.url})"
            )
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingWeights(
                f"model.weights: {weights} does not exist; expected 'none', 'imagenet' or the "
                f"path of a state dict of a torchvision {name}"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"model.weights: {path} is not readable by torch.load(weights_only=True): {first}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a trial checkpoint
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"model.weights: {path} holds a {type(state).__name__}, not a state dict")
    if any(k.startswith("backbone.") for k in state):  # a model holding a Backbone, e.g. SimpleBaseline
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    # torchvision's DenseNet files keep old names ("denselayer1.norm.1.weight" -> "denselayer1.norm1.weight").
    # The new dict drops torch.load's _metadata, so BatchNorm fills a missing num_batches_tracked (files
    # older than that buffer, like the published DenseNets) with 0 instead of failing a strict load.
    return {_DENSE_OLD.sub(r"\1\2", k): v for k, v in state.items()}


def _mismatch(expected: dict[str, Tensor], got: dict[str, Tensor]) -> str | None:
    missing = [k for k in expected if k not in got and not k.endswith(".num_batches_tracked")]  # see above
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shape mismatches (e.g. {k!r}: file {tuple(got[k].shape)}, model {tuple(expected[k].shape)})"
        )
    return ", ".join(parts) or None


def _path_problem(name: str, weights: str, problem: str, example_key: str) -> str:
    where = str(imagenet_file(name)) if weights == "imagenet" else weights
    return (
        f"model.weights: {where} does not fit {name}: {problem}; expected a torchvision {name} state dict "
        f"(keys like {example_key!r})"
    )
