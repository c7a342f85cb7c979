"""A phantom classification teacher: the cross-task paper's source model (§2.2) on data we can make.

The paper distils a face classifier (VGGFace2, §2.2) into a landmark detector on faces: a source
task on the same kind of images, whose features already know where the face's parts are. Our
stand-in is a backbone trained to classify phantom skulls by their pose, 9 classes = the tercile
of the sella→nasion line's tilt × the tercile of its length (the head's rotation and size, which
every phantom draws at random: trainables/data/phantom.py). Telling those apart takes finding the
skull's outline and both landmarks, which is knowledge a landmark detector can reuse. It trains on
a phantom of its own (another seed), never on the images the students train or are scored on.

    python -m trainables.pretrain studies/fidelity/teacher_resnet18.pt          # ~2 min on the 2-core CPU
    python -m trainables.pretrain out.pt --backbone resnet18 --input-size 96 64 --epochs 8

The file is the backbone's state dict (torchvision's keys and its 1000-way classifier; the 9 classes
are its first 9 logits), so `model.weights` and `distill.teacher` read it as any weights file, and
`distill.type: cd` compares the teacher's and the student's softmax over the same classifier.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.data.dataset import normalize
from trainables.data.phantom import PhantomConfig

CLASSES = 9  # 3 tilt terciles × 3 length terciles
SELLA, NASION = 0, 1  # phantom landmark indices (the ISBI 2015 order)


@dataclass
class PretrainConfig:
    backbone: str = "resnet18"  # model.backbone of the students that will load it
    input_size: tuple[int, int] = (96, 64)  # (H, W); the students' data.input_size
    phantom: PhantomConfig = field(
        default_factory=lambda: PhantomConfig(num_train=256, num_test1=64, num_test2=1, seed=1)
    )  # not the students' seed 0
    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3  # Adam
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch's default


def pose_classes(coords: Tensor, edges: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each image's class from its landmarks: coords (N, K, 2) -> labels (N,) in 0..8, and the
    tercile edges used, (2, 2) = [[tilt 1/3, tilt 2/3], [length 1/3, length 2/3]].

    tilt = atan2(dy, dx) of sella→nasion, length = its norm; class = 3·tilt tercile + length tercile.
    Without `edges` they are this set's own terciles (balanced classes); pass the training set's
    edges to label a held-out set the same way."""
    d = coords[:, NASION].double() - coords[:, SELLA].double()
    features = torch.stack([torch.atan2(d[:, 1], d[:, 0]), d.norm(dim=1)], dim=1)  # (N, 2)
    if edges is None:
        edges = torch.quantile(features, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64), dim=0).T  # (2, 2)
    bins = torch.stack([torch.bucketize(features[:, i].contiguous(), edges[i].contiguous()) for i in range(2)], dim=1)
    return (3 * bins[:, 0] + bins[:, 1]).long(), edges


def _split(cfg: PretrainConfig, split: str):
    from trainables import data as datasets  # imported here: the CLI's --help stays instant
    from trainables.config import DataConfig
    from trainables.data.cache import default_cache_dir
    from trainables.data.dataset import LandmarkDataset

    data = DataConfig(dataset="phantom", input_size=cfg.input_size, phantom=cfg.phantom)
    return LandmarkDataset(
        datasets.records(data, split), cfg.input_size, cache_dir=default_cache_dir(), name=f"teacher phantom/{split}"
    )


def pretrain(cfg: PretrainConfig, out: Path, log=print) -> dict:
    """Train the teacher, write its state dict to `out` (atomically) and return its figures:
    {"train/acc", "val/acc", "val/chance", "seconds"} (accuracies in [0, 1])."""
    from trainables.models.backbones import build_backbone

    start = time.time()
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train, val = _split(cfg, "train"), _split(cfg, "test1")
    train_y, edges = pose_classes(train.coords)
    val_y, _ = pose_classes(val.coords, edges)
    net = build_backbone(cfg.backbone, "none")
    net.classifier_head().requires_grad_(True)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = torch.randperm(len(train), generator=generator)
        correct, loss_sum = 0, 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            logits = net.classify(net(normalize(train.images[idx])).levels[-1])
            loss = F.cross_entropy(logits, train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == train_y[idx]).sum())
        val_acc = accuracy(net, val.images, val_y)
        log(
            f"teacher epoch {epoch}/{cfg.epochs}: loss {loss_sum / len(train):.3f}, train acc "
            f"{correct / len(train):.2f}, val acc {val_acc:.2f} (chance {1 / CLASSES:.2f})"
        )
    figures = {
        "train/acc": correct / len(train),
        "val/acc": val_acc,
        "val/chance": 1 / CLASSES,
        "seconds": time.time() - start,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(net.state_dict(), partial)  # the torchvision keys: build_backbone(name, path) loads it
    partial.replace(out)  # a killed run never leaves a half-written teacher under the real name
    return figures


@torch.no_grad()
def accuracy(net, images: Tensor, labels: Tensor, batch_size: int = 64) -> float:
    """Top-1 accuracy of net's first CLASSES logits: images (N, 1, H, W) uint8, labels (N,)."""
    net.eval()
    hits = 0
    for i in range(0, len(images), batch_size):
        logits = net.classify(net(normalize(images[i : i + batch_size])).levels[-1])
        hits += int((logits[:, :CLASSES].argmax(1) == labels[i : i + batch_size]).sum())
    return hits / max(len(images), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainables.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="where to write the teacher's state dict (.pt)")
    p.add_argument("--backbone", default=PretrainConfig.backbone)
    p.add_argument("--input-size", type=int, nargs=2, default=PretrainConfig.input_size, metavar=("H", "W"))
    p.add_argument("--images", type=int, default=256, help="phantom training images (64 more are held out)")
    p.add_argument("--epochs", type=int, default=PretrainConfig.epochs)
    a = p.parse_args(argv)
    cfg = PretrainConfig(backbone=a.backbone, input_size=tuple(a.input_size), epochs=a.epochs)
    cfg.phantom.num_train = a.images
    figures = pretrain(cfg, a.out)
    print(
        f"wrote {a.out}: val accuracy {figures['val/acc']:.2f} (chance {1 / CLASSES:.2f}) in "
        f"{math.ceil(figures['seconds'])} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
