"""FARNet (farnet paper §3.1): backbone + multi-scale feature aggregation (MSFA) + feature refinement (FR).

Coarse to fine, two heads: MSFA regresses heatmaps at stride 2, FR at full resolution (§3.4's
coarse-to-fine supervision; the trainer sums the loss over heads).

    net = FARNet(num_landmarks=19, backbone="densenet121")
    [h.shape for h in net(torch.zeros(1, 1, 800, 640))]   # [(1, 19, 400, 320), (1, 19, 800, 640)]
    net.strides                                           # (2, 1); H and W divisible by 32

Channels at width 1.0 (s(n) = max(8, round(n·width)) scales every decoder count; the backbone's
C1..C5 are not scaled). DenseNet-121 (C1..C5 = 64, 256, 512, 1024, 1024) shown; level Ln has stride 2^n.

  path                       L5                  L4    L3    L2     L1   source
  first up (from C5..C2)     3×3→C5/2, 1×1→256   256   256   256    -    paper "reduce ... to 256";
                                                                            3×3 out C5/2 (1024→512): public code
  down (from first-up L2)    2048                1024  512   (256)  -    paper: stride-2 3×3 doubles, 1×1
                                                                            "compressed back" after the concat
  second up (from down L5)   3×3→1024, 1×1→256   256   256   128    64   paper: 128 at L2, 64 at L1; 256 at
                                                                            L5..L3 and 3×3 2048→1024: public code
  coarse head (at L1)        3×3 64→64, 1×1 64→K                            paper "3×3 and 1×1"; 64: public code
  FR (full resolution)       cat(3×3 image→32, up(L1) 64, up(coarse) K) = 96+K, 3×3 (96+K)→(96+K), 1×1→K
                             paper: 32, 64, heatmaps, 3×3 + 1×1; the 3×3 keeping its width: public code (115)

Each fusion block concatenates (Fig. 3): up path cat(up×2(coarser), lateral) -> 1×1; down path
cat(3×3 stride-2 conv(finer), lateral) -> 1×1. Laterals: the first up path takes the backbone's
C4, C3, C2; the down path the first up path's L3, L4, L5; the second up path the down path's L4,
L3, L2 and, at L1, the backbone's C1. Where paper and public code (JuvenileInWind/FARNet model.py)
differ, the paper is followed:

- down-path L5: the paper's 1×1 (2304→2048) and then the up path's 3×3 + 1×1 (2048→1024→256);
  the public code fuses with one 3×3 2304→1024 instead (and skips the 1×1). +2.4 M parameters.
- FR input conv: the paper's 3×3 on the (grayscale) image; the public code uses a 1×1 on RGB.
- VGG (§4.3): its stride-1 first block (backbone l0, 64 channels, not scaled) replaces the FR's
  3×3 image conv, "directly" concatenated.

Normalisation, as the public code: every MSFA conv and the FR image conv is conv -> BatchNorm ->
ReLU (conv without bias; a bias before BatchNorm is redundant). The two heads are plain convs with
bias and no activation between the 3×3 and the 1×1, as the public code does (the paper is silent).

Ablations (Table 2): fusion="add" is MSFA(+): every fusion block becomes FPN/PAN-style (§3.1.1):
a 1×1 conv + BatchNorm projects each input whose channel count differs from the block's output
(the down path's stride-2 conv already matches the down-sampled input), the two are added, and a
3×3 conv -> BatchNorm -> ReLU follows; the channel counts are those above ("the same channel size
setting", §4.4). refine=False drops FR (MSFA head only, strides (2,)); coarse_supervision=False is
FR*: no MSFA head and no MSFA heatmaps into FR (strides (1,)).

Up-sampling is bilinear (align_corners=False) to the exact size of the map it joins.

Cost, DenseNet-121, K = 19, width 1.0: 64.60 M parameters (1.03 M of them the kept ImageNet
classifier), 313 GFLOPs at 1×1×800×640 (FlopCounterMode, a multiply-add = 2). The public code's
measured 78.9 M counts 17.7 M in convs it registers but never runs (each `wblock` holds a 1×1 and a
3×3, uses one); the convs it runs hold 61.2 M, +2.4 M for the paper's L5 block (above) + 1.0 M classifier
gives this model's count. MSFA(+) is 111.4 M / 482 GFLOPs: its post-add 3×3s run at the down path's
512/1024/2048 channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.models.backbones import Backbone, build_backbone

FUSIONS = ("concat", "add")


def switch_problems(fusion: str, refine: bool, coarse_supervision: bool) -> list[str]:
    """Invalid ablation settings, as messages naming the config key (shared with spec validation)."""
    out = []
    if fusion not in FUSIONS:
        out.append(f"model.fusion: unknown {fusion!r}; choose one of {list(FUSIONS)}")
    if not refine and not coarse_supervision:
        out.append("model.coarse_supervision: false needs model.refine: true (without either FARNet has no head)")
    return out


class FARNet(nn.Module):
    """(B, 1, H, W) -> [(B, K, H/2, W/2), (B, K, H, W)], heads coarse to fine (see `strides`).

    H and W divisible by 32. `backbone` keeps its ImageNet classifier (backbone.classify) for distillation.
    """

    divisor = 32  # H and W must be multiples of this

    def __init__(
        self,
        num_landmarks: int,
        backbone: str = "densenet121",
        width: float = 1.0,
        weights: str = "none",
        fusion: str = "concat",
        refine: bool = True,
        coarse_supervision: bool = True,
    ):
        super().__init__()
        problems = switch_problems(fusion, refine, coarse_supervision)
        if problems:
            raise ValueError(problems[0])
        if not width > 0:
            raise ValueError(f"model.width: must be > 0, got {width}")
        self.backbone: Backbone = build_backbone(backbone, weights)
        self.msfa = MSFA(self.backbone.channels, width, fusion)
        c1 = self.msfa.out_channels
        self.coarse_head = Head(c1, c1, num_landmarks) if coarse_supervision else None
        self.fr = None
        if refine:
            self.fr = FeatureRefinement(
                c1,
                num_landmarks if coarse_supervision else 0,
                num_landmarks,
                width,
                image_channels=None if self.backbone.l0_channels else 1,
                l0_channels=self.backbone.l0_channels,
            )
        self.strides = ((2,) if coarse_supervision else ()) + ((1,) if refine else ())

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 1, H, W) normalised grayscale -> one (B, K, H/s, W/s) per s in self.strides."""
        feats = self.backbone(x)
        l1 = self.msfa(feats.levels)
        heads = []
        coarse = None
        if self.coarse_head is not None:
            coarse = self.coarse_head(l1)
            heads.append(coarse)
        if self.fr is not None:
            heads.append(self.fr(x, feats.l0, l1, coarse))
        return heads


class MSFA(nn.Module):
    """Multi-scale feature aggregation (§3.1.1): up (L5→L2), down (L2→L5), up (L5→L1).

    levels [C1..C5], (B, channels[i], H/2^(i+1), W/2^(i+1)) -> L1 features (B, s(64), H/2, W/2).
    """

    def __init__(self, channels: tuple[int, ...], width: float, fusion: str):
        super().__init__()

        def s(n: int) -> int:
            return max(8, round(n * width))

        c1, c2, c3, c4, c5 = channels
        # first up-sampling path: 3×3 + 1×1 on C5, then fuse with C4, C3, C2 to 256 each
        self.top1 = nn.Sequential(conv_bn_relu(c5, s(c5 // 2), 3), conv_bn_relu(s(c5 // 2), s(256), 1))
        self.up1 = nn.ModuleList([Fuse(s(256), lat, s(256), fusion) for lat in (c4, c3, c2)])
        # down-sampling path from the first up path's L2: 3×3 stride 2 doubling, fuse back to that width
        down = (s(512), s(1024), s(2048))
        ins = (s(256), *down[:-1])
        self.down = nn.ModuleList([conv_bn_relu(cin, cout, 3, stride=2) for cin, cout in zip(ins, down)])
        self.down_fuse = nn.ModuleList([Fuse(c, s(256), c, fusion) for c in down])
        # second up-sampling path from the down path's L5: 3×3 + 1×1, then L4, L3, L2, L1
        self.top2 = nn.Sequential(conv_bn_relu(down[-1], s(1024), 3), conv_bn_relu(s(1024), s(256), 1))
        outs = (s(256), s(256), s(128), s(64))
        ins = (s(256), *outs[:-1])
        lats = (down[1], down[0], s(256), c1)
        self.up2 = nn.ModuleList([Fuse(cin, lat, cout, fusion) for cin, lat, cout in zip(ins, lats, outs)])
        self.out_channels = outs[-1]

    def forward(self, levels: list[Tensor]) -> Tensor:
        c1, c2, c3, c4, c5 = levels
        t = self.top1(c5)
        first = [t]  # first up path, L5..L2
        for fuse, lat in zip(self.up1, (c4, c3, c2)):
            t = fuse(_up(t, lat), lat)
            first.append(t)
        d = first[-1]
        downs = [d]  # down path, L2..L5
        for conv, fuse, lat in zip(self.down, self.down_fuse, first[-2::-1]):
            d = fuse(conv(d), lat)
            downs.append(d)
        t = self.top2(d)
        for fuse, lat in zip(self.up2, (downs[2], downs[1], downs[0], c1)):
            t = fuse(_up(t, lat), lat)
        return t


class Fuse(nn.Module):
    """Merge two maps of the same size: (B, ca, h, w), (B, cb, h, w) -> (B, cout, h, w).

    concat (Fig. 3): cat -> 1×1 conv-BN-ReLU. add (MSFA(+), FPN/PAN): 1×1 conv-BN on each input
    whose channels differ from cout, sum, 3×3 conv-BN-ReLU.
    """

    def __init__(self, ca: int, cb: int, cout: int, fusion: str):
        super().__init__()
        self.fusion = fusion
        if fusion == "concat":
            self.conv = conv_bn_relu(ca + cb, cout, 1)
        else:
            self.proj_a = _project(ca, cout)
            self.proj_b = _project(cb, cout)
            self.conv = conv_bn_relu(cout, cout, 3)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.fusion == "concat":
            return self.conv(torch.cat([a, b], dim=1))
        return self.conv(self.proj_a(a) + self.proj_b(b))


class Head(nn.Sequential):
    """Heatmap regression: 3×3 conv (cin -> mid) then 1×1 conv to K, with bias, no activation
    (public code). (B, cin, h, w) -> (B, K, h, w)."""

    def __init__(self, cin: int, mid: int, num_landmarks: int):
        super().__init__(nn.Conv2d(cin, mid, 3, padding=1), nn.Conv2d(mid, num_landmarks, 1))


class FeatureRefinement(nn.Module):
    """Feature refinement (§3.1.2) at full resolution.

    cat(C0, up×2(L1 features), up×2(coarse heatmaps)) -> Head -> (B, K, H, W). C0 is a 3×3
    conv-BN-ReLU of the image to s(32) channels, or VGG's stride-1 first block (l0, §4.3).
    `heatmap_channels` is K with coarse supervision and 0 for FR* (Table 2).
    """

    def __init__(
        self,
        feature_channels: int,
        heatmap_channels: int,
        num_landmarks: int,
        width: float,
        image_channels: int | None = 1,
        l0_channels: int | None = None,
    ):
        super().__init__()
        if image_channels is not None:
            self.stem = conv_bn_relu(image_channels, max(8, round(32 * width)), 3)
            c0 = self.stem[0].out_channels
        else:
            self.stem = None  # VGG: the backbone's l0 is C0
            c0 = l0_channels
        cin = c0 + feature_channels + heatmap_channels
        self.head = Head(cin, cin, num_landmarks)

    def forward(self, x: Tensor, l0: Tensor | None, l1: Tensor, coarse: Tensor | None) -> Tensor:
        """x (B, 1, H, W), l0 (B, 64, H, W) or None, l1 (B, c, H/2, W/2), coarse (B, K, H/2, W/2) or None."""
        c0 = self.stem(x) if self.stem is not None else l0
        parts = [c0, _up(l1, c0)] + ([_up(coarse, c0)] if coarse is not None else [])
        return self.head(torch.cat(parts, dim=1))


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _project(cin: int, cout: int) -> nn.Module:
    if cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


def _up(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
