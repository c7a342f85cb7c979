"""Target rendering: our batched separable renderer vs the reference style, side by side.

The reference style (FARNet's and many landmark repositories' data loaders) builds each
landmark's heatmap from a fresh numpy meshgrid, one landmark and one sample at a time, in
float64. Our trainer renders on the training device every step instead (Adaloss changes σ every
epoch, per landmark), so the renderer must be cheap. Issue 4's goal: at least 50× on the 2-core
CPU for batch 8, 19 landmarks at 800×640 plus 400×320 (FARNet's fine and coarse heads).

"ours" writes into buffers kept between steps (`TargetRenderer`, what the trainer uses);
"ours, fresh tensors" allocates the output every call, to show what the buffers save.

    python benchmarks/render_targets.py [--device cuda] [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trainables.heatmaps import TargetRenderer, render_gaussians


def reference(x: float, y: float, sigma: float, size: tuple[int, int]) -> np.ndarray:
    """One landmark's heatmap the reference way: a fresh meshgrid, float64. -> (H, W)."""
    h, w = size
    xx, yy = np.meshgrid(np.arange(w), np.arange(h))
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


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
    p.add_argument("--batch", type=int, default=8)
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
    renderer = TargetRenderer()
    c = torch.from_numpy(coords).to(dev)
    s = torch.full((args.landmarks,), sigma, device=dev)

    def ours():
        for slot, stride in enumerate(scales):
            renderer(c, s, (h // stride, w // stride), stride, slot)

    def ours_fresh():
        for stride in scales:
            render_gaussians(c, s, (h // stride, w // stride), stride)

    def ref():
        for b in range(args.batch):
            for stride in scales:
                for x, y in (coords[b] + 0.5) / stride - 0.5:
                    reference(x, y, sigma / stride, (h // stride, w // stride))

    # Same targets both ways (to float32 precision), so the race is fair.
    ref_fine = reference(*((coords[0, 0] + 0.5) / 2 - 0.5), sigma / 2, (h // 2, w // 2))
    ours_fine = render_gaussians(c[:1, :1], s[:1], (h // 2, w // 2), 2)[0, 0].cpu().numpy()
    assert np.abs(ref_fine - ours_fine).max() < 1e-5

    t_ours = timed(ours, args.repeats, sync)
    t_fresh = timed(ours_fresh, args.repeats, sync)
    t_ref = timed(ref, max(1, args.repeats // 2))
    n = args.batch
    print(f"targets for batch {n} × {args.landmarks} landmarks at {h}×{w} and {h // 2}×{w // 2}, σ = {sigma} px, "
          f"{torch.get_num_threads()} torch threads")
    print(f"  reference (numpy meshgrid per landmark per sample, cpu): {1000 * t_ref / n:8.2f} ms/sample")
    print(f"  ours, fresh tensors ({dev.type}):                         {1000 * t_fresh / n:8.2f} ms/sample "
          f"({t_ref / t_fresh:.1f}x)")
    print(f"  ours, reused buffers ({dev.type}):                        {1000 * t_ours / n:8.2f} ms/sample "
          f"({t_ref / t_ours:.1f}x)")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
