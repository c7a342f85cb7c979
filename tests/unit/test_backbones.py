"""Backbones (feature taps, input conversion, weights) and SimpleBaseline, on real torchvision models."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from trainables.data.dataset import PIXEL_MEAN, PIXEL_STD
from trainables.models.backbones import BACKBONES, build_backbone, weights_problem
from trainables.models.simple_baseline import SimpleBaseline

# C1..C5 channels by hand: ResNet stem 64 then 64·expansion·2^i; DenseNet 64 + n·32 per block, halved
# by each transition (121: 64+6·32=256, 128+12·32=512, 256+24·32=1024, 512+16·32=1024); VGG blocks 2..5 + pool.
CHANNELS = {
    "vgg16": (128, 256, 512, 512, 512),
    "vgg19": (128, 256, 512, 512, 512),
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet101": (64, 256, 512, 1024, 2048),
    "resnet152": (64, 256, 512, 1024, 2048),
    "densenet121": (64, 256, 512, 1024, 1024),
    "densenet169": (64, 256, 512, 1280, 1664),  # 256+32·32=1280 -> 640, 640+32·32=1664
}


@pytest.fixture
def hub_dir(tmp_path):
    """An empty torch hub cache for the test; the previous hub dir is restored afterwards."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_registry_names():
    assert set(BACKBONES) == set(CHANNELS)


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_levels_l0_and_classifier_shapes(name):
    net = build_backbone(name).eval()
    assert net.name == name and net.channels == CHANNELS[name] and net.strides == (2, 4, 8, 16, 32)
    with torch.no_grad():
        f = net(torch.randn(2, 1, 64, 64))
        logits = net.classify(f.levels[-1])
    assert [tuple(t.shape) for t in f.levels] == [(2, c, 64 // s, 64 // s) for c, s in zip(CHANNELS[name], net.strides)]
    if name.startswith("vgg"):
        assert net.l0_channels == 64 and tuple(f.l0.shape) == (2, 64, 64, 64)
    else:
        assert net.l0_channels is None and f.l0 is None
    assert tuple(logits.shape) == (2, 1000)


def test_grey_input_becomes_imagenet_normalised_rgb():
    # Grey level 0.3: ours (0.3 - 0.5) / 0.25 = -0.8; ImageNet (0.3 - mean) / std per channel:
    # R (0.3 - 0.485) / 0.229 = -0.807860, G (0.3 - 0.456) / 0.224 = -0.696429, B (0.3 - 0.406) / 0.225 = -0.471111
    assert (PIXEL_MEAN, PIXEL_STD) == (0.5, 0.25)
    x = torch.full((1, 1, 64, 64), -0.8)
    rgb = torch.tensor([-0.807860, -0.696429, -0.471111]).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    net = build_backbone("resnet18").eval()
    torch.testing.assert_close(net.to_imagenet(x), rgb, atol=1e-5, rtol=0)
    with torch.no_grad():  # and forward really feeds that to the stem: C1 = relu(bn1(conv1(rgb)))
        torch.testing.assert_close(net(x).levels[0], net.relu(net.bn1(net.conv1(rgb))), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "densenet121"])
def test_simple_baseline_one_head_at_stride_4(backbone):
    net = SimpleBaseline(num_landmarks=5, backbone=backbone, width=0.25).eval()
    with torch.no_grad():
        heads = net(torch.randn(2, 1, 64, 64))
    assert net.strides == (4,) and len(heads) == 1 and tuple(heads[0].shape) == (2, 5, 16, 16)
    deconvs = [m for m in net.deconv if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in deconvs] == [(CHANNELS[backbone][-1], 64), (64, 64), (64, 64)]
    assert net.head.in_channels == 64 and torch.count_nonzero(net.head.bias) == 0
    assert 0.0005 < net.head.weight.std().item() < 0.002  # N(0, 0.001²)
    assert isinstance(net.backbone.classify(torch.zeros(1, CHANNELS[backbone][-1], 2, 2)), torch.Tensor)


def test_every_trainable_parameter_gets_a_gradient():
    # DistributedDataParallel fails on a trainable parameter without a gradient; the unused
    # classifier head comes frozen, and classify() still back-propagates into the features.
    net = SimpleBaseline(num_landmarks=3, backbone="resnet18", width=0.125)
    net(torch.randn(2, 1, 64, 64))[0].square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not any(p.requires_grad for p in net.backbone.classifier_head().parameters())
    net.zero_grad()
    net.backbone.classify(net.backbone(torch.randn(2, 1, 64, 64)).levels[-1]).logsumexp(1).sum().backward()
    assert net.backbone.layer4[1].conv2.weight.grad is not None


def test_simple_baseline_width_floor():
    net = SimpleBaseline(num_landmarks=3, backbone="resnet18", width=0.001)
    assert net.head.in_channels == 8


def _stir_batchnorm(net: nn.Module) -> None:
    """One train-mode forward so running stats differ from a fresh build."""
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 1, 64, 64))
    net.eval()


def test_backbone_state_dict_round_trip(tmp_path):
    net = build_backbone("densenet121")
    _stir_batchnorm(net)
    torch.save(net.state_dict(), tmp_path / "b.pt")
    fresh = build_backbone("densenet121")
    fresh.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True))
    fresh.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a, b = net(x), fresh(x)
        assert all(torch.equal(u, v) for u, v in zip(a.levels, b.levels))
        assert torch.equal(net.classify(a.levels[-1]), fresh.classify(b.levels[-1]))


def test_simple_baseline_state_dict_round_trip(tmp_path):
    net = SimpleBaseline(num_landmarks=4, backbone="resnet18", width=0.25)
    _stir_batchnorm(net)
    torch.save(net.state_dict(), tmp_path / "sb.pt")
    fresh = SimpleBaseline(num_landmarks=4, backbone="resnet18", width=0.25)
    fresh.load_state_dict(torch.load(tmp_path / "sb.pt", weights_only=True))
    fresh.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x)[0], fresh(x)[0])


def test_imagenet_weights_come_from_the_local_hub_cache(hub_dir):
    expected = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"  # basename of ResNet18_Weights.IMAGENET1K_V1.url
    problem = weights_problem("resnet18", "imagenet")
    assert problem.startswith("model.weights: imagenet weights for resnet18 are not in the torch hub cache")
    assert f"put resnet18-f37072fd.pth in {hub_dir / 'checkpoints'}/" in problem and "\n" not in problem
    with pytest.raises(ValueError, match=re.escape(problem)):
        build_backbone("resnet18", "imagenet")

    expected.parent.mkdir(parents=True)
    state = tvm.resnet18().state_dict()
    torch.save(state, expected)
    assert weights_problem("resnet18", "imagenet") is None
    net = build_backbone("resnet18", "imagenet")
    assert torch.equal(net.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(net.fc.weight, state["fc.weight"])


def test_weights_from_a_path(tmp_path):
    state = tvm.resnet18().state_dict()
    torch.save(state, tmp_path / "r18.pth")
    assert weights_problem("resnet18", str(tmp_path / "r18.pth")) is None
    net = build_backbone("resnet18", str(tmp_path / "r18.pth"))
    assert torch.equal(net.conv1.weight, state["conv1.weight"])

    # A SimpleBaseline state dict (keys "backbone.…") gives its backbone.
    sb = SimpleBaseline(num_landmarks=2, backbone="resnet18", width=0.25)
    torch.save(sb.state_dict(), tmp_path / "sb.pt")
    assert torch.equal(
        build_backbone("resnet18", str(tmp_path / "sb.pt")).layer4[0].conv1.weight, sb.backbone.layer4[0].conv1.weight
    )


def test_densenet_weights_with_torchvision_legacy_key_names(tmp_path):
    # torchvision's published DenseNet files name "denselayer1.norm1.weight" as "denselayer1.norm.1.weight"
    # and, older than BatchNorm's num_batches_tracked buffer, have none.
    state = tvm.densenet121().state_dict()
    legacy = {
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, tmp_path / "d121.pth")
    assert weights_problem("densenet121", str(tmp_path / "d121.pth")) is None
    net = build_backbone("densenet121", str(tmp_path / "d121.pth"))
    key = "features.denseblock2.denselayer3.conv2.weight"
    assert torch.equal(net.state_dict()[key], state[key])


def test_weights_path_problems_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    msg = weights_problem("resnet18", str(missing))
    assert msg.startswith(f"model.weights: {missing} does not exist") and "\n" not in msg
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        build_backbone("resnet18", str(missing))

    wrong = tmp_path / "r34.pth"  # a resnet34 has more blocks than a resnet18
    torch.save(tvm.resnet34().state_dict(), wrong)
    msg = weights_problem("resnet18", str(wrong))
    assert (
        msg.startswith(f"model.weights: {wrong} does not fit resnet18: ") and "unexpected keys (e.g. 'layer1.2." in msg
    )
    assert msg.endswith("expected a torchvision resnet18 state dict (keys like 'conv1.weight')") and "\n" not in msg
    with pytest.raises(ValueError, match=re.escape(msg)):
        build_backbone("resnet18", str(wrong))

    shapes = tmp_path / "r18_100.pth"  # right keys, a 100-class head
    torch.save(tvm.resnet18(num_classes=100).state_dict(), shapes)
    assert "shape mismatches (e.g. 'fc.weight': file (100, 512), model (1000, 512))" in weights_problem(
        "resnet18", str(shapes)
    )


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"model.backbone: unknown 'resnet51'; choose one of \['densenet121', "):
        build_backbone("resnet51")
    assert "'vgg19'" in weights_problem("resnet51", "none")
    with pytest.raises(ValueError, match="unknown 'resnet51'"):
        SimpleBaseline(num_landmarks=2, backbone="resnet51")
