"""Cost figures: parameter count, PyTorch's FLOP count and latency, checked on layers small enough
to count by hand."""

import pytest
import torch
from torch import nn

from trainables.cost import cost_figures, forward_gflops, latency_ms, params_m


class OneConv(nn.Module):
    """A single 3×3 conv, 1 -> 4 channels, padding 1: small enough to count by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)

    def forward(self, x):
        return [self.conv(x)]


def test_params_by_hand():
    # 4 filters × 1 input channel × 3 × 3 = 36 weights.
    assert params_m(OneConv()) == pytest.approx(36e-6)


def test_flops_by_hand_and_the_model_is_untouched():
    # Each of the 4 × 8 × 6 outputs is 9 multiply-adds = 18 FLOPs: 4·48·18 = 3456 FLOPs.
    model = OneConv()
    before = model.conv.weight.detach().clone()
    assert forward_gflops(model, (8, 6)) == pytest.approx(3456e-9)
    assert model.conv.weight.device.type == "cpu" and torch.equal(model.conv.weight, before)


def test_latency_is_positive_and_keeps_the_training_mode():
    model = OneConv().train()
    assert latency_ms(model, (16, 16), "cpu", budget_s=0.05) > 0
    assert model.training


def test_cost_figures_names():
    assert set(cost_figures(OneConv(), (8, 8), "cpu")) == {"cost/params_m", "cost/gflops", "cost/latency_ms"}
