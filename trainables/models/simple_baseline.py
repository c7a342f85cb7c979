"""SimpleBaseline (Xiao et al. 2018), the target model of the cross-task paper §2.2.

Backbone C5 (stride 32) -> three × [ConvTranspose2d(kernel 4, stride 2, padding 1, no bias), BN, ReLU]
with c = round(256·width) channels (at least 8) -> 1×1 conv to K heatmaps at stride 4. Initialised as
the paper's public code: deconv and final conv weights N(0, 0.001²), final bias 0, BN (1, 0).
The papers use a ResNet encoder (cross-task: ResNet-50); any name in BACKBONES works here. The
backbone keeps its ImageNet classifier (`self.backbone.classify`) for classifier distillation (L_CD).

    net = SimpleBaseline(num_landmarks=19, backbone="resnet50", width=1.0)
    [h.shape for h in net(torch.zeros(2, 1, 256, 256))]   # [(2, 19, 64, 64)]; H, W divisible by 32
"""

from __future__ import annotations

from torch import Tensor, nn

from trainables.models.backbones import Backbone, build_backbone


class SimpleBaseline(nn.Module):
    strides = (4,)  # output stride of each head w.r.t. the input
    divisor = 32  # H and W must be multiples of this (the backbone down-samples 5 times)

    def __init__(self, num_landmarks: int, backbone: str = "resnet50", width: float = 1.0, weights: str = "none"):
        super().__init__()
        self.backbone: Backbone = build_backbone(backbone, weights)
        c = max(8, round(256 * width))
        layers, cin = [], self.backbone.channels[-1]
        for _ in range(3):
            layers += [
                nn.ConvTranspose2d(cin, c, 4, stride=2, padding=1, output_padding=0, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            cin = c
        self.deconv = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, num_landmarks, 1)
        for m in self.deconv:
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.001)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 1, H, W) -> [(B, K, H/4, W/4)]."""
        return [self.head(self.deconv(self.backbone(x).levels[-1]))]
