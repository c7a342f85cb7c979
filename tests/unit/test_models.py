"""The model registry as the trainer and the spec see it: names from YAML, heads and strides,
validation before any trial, and a multi-head model trained by the shared loop."""

import pytest
import torch
from torch import nn

from study.spec import SpecError, load_spec
from trainables import TrialConfig, fit
from trainables.config import ModelConfig, apply_overrides
from trainables.models import build_model, model_problems
from trainables.models.backbones import BACKBONES


@pytest.mark.parametrize(
    "name,backbone,strides",
    [
        ("unet", "resnet18", (1,)),
        ("farnet", "resnet18", (2, 1)),
        ("simple_baseline", "resnet18", (4,)),
    ],
)
def test_each_model_name_builds_with_its_heads(name, backbone, strides):
    net = build_model(ModelConfig(name=name, backbone=backbone, width=0.125), num_landmarks=3).eval()
    with torch.no_grad():
        heads = net(torch.zeros(1, 1, 64, 96))
    assert tuple(net.strides) == strides
    assert [tuple(h.shape) for h in heads] == [(1, 3, 64 // s, 96 // s) for s in strides]


def test_unet_leaky_relu_switch():
    net = build_model(ModelConfig(name="unet", width=0.125, activation="leaky_relu"), 2)
    assert any(isinstance(m, nn.LeakyReLU) for m in net.modules())
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())


def test_model_problems_name_the_config_key():
    assert model_problems(ModelConfig(name="farnet", backbone="resnet18"), (100, 96)) == [
        "data.input_size: [100, 96] must be positive multiples of 32 for model.name farnet"
    ]
    (p,) = model_problems(ModelConfig(name="farnet", refine=False, coarse_supervision=False), (64, 64))
    assert p.startswith("model.coarse_supervision: false needs model.refine: true")
    (p,) = model_problems(ModelConfig(name="unet", weights="imagenet"), (64, 64))
    assert p.startswith("model.weights:")


def test_a_wrong_backbone_fails_at_spec_validation_listing_the_valid_ones(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "study: {name: s}\nbase:\n  model: {name: farnet, backbone: resnet51}\n  data: {input_size: [64, 64]}\n"
    )
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    (p,) = e.value.problems
    assert "base.model.backbone: unknown 'resnet51'" in p
    assert all(name in p for name in BACKBONES)


def test_missing_imagenet_weights_fail_at_spec_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "study: {name: s}\nbase:\n  model: {name: simple_baseline, backbone: resnet18, weights: imagenet}\n"
        "  data: {input_size: [64, 64]}\n"
    )
    with pytest.raises(SpecError, match=r"base.model.weights: imagenet weights for resnet18 .*resnet18-f37072fd.pth"):
        load_spec(spec)


def test_trainer_supervises_both_farnet_heads_and_reports_costs(tiny_config):
    cfg = TrialConfig.from_dict(
        apply_overrides(
            tiny_config,
            {
                "model.name": "farnet",
                "model.backbone": "resnet18",
                "model.width": 0.125,
                "data.input_size": [64, 64],
                "train.epochs": 1,
            },
        )
    )
    reports = []
    fit(cfg, lambda m, c: reports.append(m))
    (m,) = reports
    assert m["cost/gflops"] > 0 and m["cost/latency_ms"] > 0 and m["cost/params_m"] > 11  # resnet18 alone is 11.2 M
    assert m["val/mre_mm"] > 0
