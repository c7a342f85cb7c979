"""Model cost side by side: params, forward GFLOPs, latency and train-step throughput.

Default: FARNet-densenet121 at the paper's width (1.0) against the CPU-sized width 0.25, with 19
landmarks; FLOPs at 800×640 (the paper's ISBI input), train steps at 256×256, batch 2 (the
figure the public FARNet code manages at 0.95 img/s on a 2-core CPU).

    python benchmarks/model_cost.py [--device cuda] [--models farnet:densenet121:1.0 unet::0.25 ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from trainables.config import LossConfig, ModelConfig
from trainables.cost import forward_gflops, latency_ms, params_m
from trainables.heatmaps import render_gaussians
from trainables.losses import mse
from trainables.models import build_model


def train_img_per_s(model, size, batch: int, device, steps: int, warmup: int = 2) -> float:
    """Full train steps (forward, summed head losses, backward, Adam) per second × batch."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, *size, device=device)
    coords = torch.rand(batch, 19, 2, device=device) * torch.tensor([size[1], size[0]], device=device)
    sigma = torch.full((19,), 10.0, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        heads = model(x)
        loss = sum(
            mse(h, render_gaussians(coords, sigma, tuple(h.shape[-2:]), s), LossConfig()).mean()
            for h, s in zip(heads, model.strides)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=["farnet:densenet121:1.0", "farnet:densenet121:0.25"],
        help="name:backbone:width entries",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--flops-size", type=int, nargs=2, default=[800, 640])
    p.add_argument("--train-size", type=int, nargs=2, default=[256, 256])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    rows = []
    for entry in args.models:
        name, backbone, width = entry.split(":")
        cfg = ModelConfig(name=name, backbone=backbone or "resnet18", width=float(width))
        model = build_model(cfg, 19).to(args.device)
        rows.append(
            (
                entry,
                params_m(model),
                forward_gflops(model, tuple(args.flops_size)),
                latency_ms(model, tuple(args.flops_size), args.device),
                train_img_per_s(model, tuple(args.train_size), args.batch, args.device, args.steps),
            )
        )
    fh, fw = args.flops_size
    th, tw = args.train_size
    print(f"19 landmarks, device {args.device} ({torch.get_num_threads()} threads)")
    print(
        f"{'model':<28} {'params M':>9} {f'GFLOPs@{fh}x{fw}':>16} {f'latency ms@{fh}x{fw}':>20} "
        f"{f'train img/s@{th}x{tw} b{args.batch}':>24} {'vs first':>9}"
    )
    for entry, pm, gf, lat, ips in rows:
        print(f"{entry:<28} {pm:9.2f} {gf:16.1f} {lat:20.1f} {ips:24.2f} {ips / rows[0][4]:8.1f}x")


if __name__ == "__main__":
    main()
