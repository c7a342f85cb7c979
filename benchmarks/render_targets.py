"""Target rendering: our batched separable renderer vs a per-landmark numpy loop, side by side.

FARNet's public code renders each landmark's full 2-D Gaussian in numpy inside the data loader
(0.285 s per sample at 800×640 with 19 landmarks on two scales, measured on a 2-core CPU). Our
trainer renders on the training device every step (σ may change each epoch), so it must be cheap.

    python benchmarks/render_targets.py [--device cuda] [--batch 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trainables.heatmaps import render_gaussians


def numpy_loop(coords: np.ndarray, sigma: float, size: tuple[int, int]) -> np.ndarray:
    """The reference style: one dense 2-D Gaussian per landmark, in a Python loop. (K, 2) -> (K, H, W)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((len(coords), h, w), np.float32)
    for k, (x, y) in enumerate(coords):
        out[k] = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return out


def timed(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, nargs=2, default=[800, 640], metavar=("H", "W"))
    p.add_argument("--landmarks", type=int, default=19)
    args = p.parse_args()
    h, w = args.size
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    coords = rng.uniform([0, 0], [w, h], size=(args.batch, args.landmarks, 2)).astype(np.float32)
    sigma = 10.0
    scales = (1, 2)  # FARNet's fine (full) and coarse (1/2) heads

    def ours():
        c = torch.from_numpy(coords).to(dev)
        s = torch.full((args.landmarks,), sigma, device=dev)
        for stride in scales:
            render_gaussians(c, s, (h // stride, w // stride), stride)

    def reference():
        for b in range(args.batch):
            for stride in scales:
                numpy_loop((coords[b] + 0.5) / stride - 0.5, sigma / stride, (h // stride, w // stride))

    t_ours = timed(ours, args.repeats, sync)
    t_ref = timed(reference, max(1, args.repeats // 2))
    print(f"targets for {args.batch} samples × {args.landmarks} landmarks at {h}×{w} and {h // 2}×{w // 2}")
    print(f"  per-landmark numpy loop (cpu):   {1000 * t_ref / args.batch:8.2f} ms/sample")
    print(f"  batched separable ({dev.type}):       {1000 * t_ours / args.batch:8.2f} ms/sample")
    print(f"  speed-up: {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
