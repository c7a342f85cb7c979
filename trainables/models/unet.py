"""U-Net of the adaloss paper §4.1: 9 convolutional layers, kernel 5, BatchNorm, ReLU (or LeakyReLU,
as the paper's endoscopy model uses).

Layout (c = round(32·width)): three encoder convs at strides 1, 2, 4 (c, 2c, 4c), a bottleneck
conv at stride 8 (8c), three decoder convs after bilinear up-sampling and skip concatenation
(4c, 2c, c), one more conv at full resolution, and a 1×1 conv to K heatmaps: 8 convs of kernel 5
plus the 1×1 head. Heatmaps come out at full input resolution (stride 1).

    net = UNet(in_channels=1, num_landmarks=19, width=0.25)
    net(torch.zeros(2, 1, 128, 104))[0].shape    # (2, 19, 128, 104); H and W divisible by 8
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True)}


def conv_bn_act(cin: int, cout: int, stride: int = 1, activation: str = "relu") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 5, stride=stride, padding=2, bias=False),
        nn.BatchNorm2d(cout),
        ACTIVATIONS[activation](),
    )


class UNet(nn.Module):
    strides = (1,)  # output stride of each head w.r.t. the input
    divisor = 8  # H and W must be multiples of this

    def __init__(self, in_channels: int, num_landmarks: int, width: float = 1.0, activation: str = "relu"):
        super().__init__()
        c = max(4, round(32 * width))

        def block(cin, cout, stride=1):
            return conv_bn_act(cin, cout, stride, activation)

        self.enc1 = block(in_channels, c)
        self.enc2 = block(c, 2 * c, stride=2)
        self.enc3 = block(2 * c, 4 * c, stride=2)
        self.bottleneck = block(4 * c, 8 * c, stride=2)
        self.dec3 = block(8 * c + 4 * c, 4 * c)
        self.dec2 = block(4 * c + 2 * c, 2 * c)
        self.dec1 = block(2 * c + c, c)
        self.refine = block(c, c)
        self.head = nn.Conv2d(c, num_landmarks, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C, H, W) -> [(B, K, H, W)]: one head, listed like multi-head models' outputs."""
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        b = self.bottleneck(e3)
        d3 = self.dec3(torch.cat([_up(b, e3), e3], dim=1))
        d2 = self.dec2(torch.cat([_up(d3, e2), e2], dim=1))
        d1 = self.dec1(torch.cat([_up(d2, e1), e1], dim=1))
        return [self.head(self.refine(d1))]


def _up(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
