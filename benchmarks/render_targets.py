"""Target rendering: our `TargetRenderer` vs a port of the FARNet authors' target code, at 1 and 2 torch threads.

The reference is our own numpy port (written for this benchmark; no code of theirs is copied) of
what the public FARNet data loader (github.com/JuvenileInWind/FARNet, data.py) does for each
training sample, one sample at a time:
  - fine head: for each of the K landmarks, a fresh float64 meshgrid of 1-based pixel coordinates
    (linspace(1, W, W) × linspace(1, H, H)) over the full H×W input, the squared distance to the
    landmark, exp(−d²/2σ²), written into a float64 (K, H, W) array of zeros;
  - coarse head: the same on the half-resolution H/2 × W/2 grid, with the coordinates halved and
    σ unchanged (10 heatmap pixels at both scales, as their config has it);
  - each array cast to float32 and wrapped as a torch tensor; their DataLoader's collate then
    stacks the samples into a batch (a copy), which is included here.
It is single-threaded numpy whatever torch's thread count. (Their loader runs it in 4 worker
processes at batch 1, overlapping the GPU; this measures the CPU work per sample.)

Ours renders the whole batch in one call on the training device, separably (the outer product of
two 1-D Gaussians per landmark), into buffers kept between steps (`TargetRenderer`, what the
trainer runs); "fresh tensors" allocates the output every call instead.

Each configuration is timed in interleaved rounds (reference, ours at 1 thread, ours at 2
threads, …, then the next round), so that a change in the machine's load hits all of them alike;
the median round is printed, with the ratios from the same run.

    python benchmarks/render_targets.py [--device cuda] [--batch 8] [--rounds 5] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from trainables.heatmaps import TargetRenderer, render_gaussians


def farnet_gaussian(width: int, height: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    """One landmark's target the FARNet way: a fresh float64 grid of 1-based pixel coordinates. -> (H, W)."""
    xs, ys = np.meshgrid(np.linspace(1, width, width), np.linspace(1, height, height))
    dx, dy = xs - cx, ys - cy
    return np.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))


def farnet_sample(
    x: np.ndarray, y: np.ndarray, sigma: float, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both heads' targets of one sample, landmark by landmark: (K, H, W) and (K, H/2, W/2) float32 tensors.

    x, y: (K,) landmark coordinates in their 1-based input pixels.
    """
    h, w = size
    fine = np.zeros((len(x), h, w))
    for k in range(len(x)):
        fine[k] = farnet_gaussian(w, h, x[k], y[k], sigma)
    coarse = np.zeros((len(x), h // 2, w // 2))
    for k in range(len(x)):
        coarse[k] = farnet_gaussian(w // 2, h // 2, x[k] / 2, y[k] / 2, sigma)
    return (
        torch.from_numpy(np.asarray(fine, dtype="float32")).float(),
        torch.from_numpy(np.asarray(coarse, dtype="float32")).float(),
    )


def farnet_batch(coords: np.ndarray, sigma: float, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """coords (B, K, 2) 1-based (x, y) -> the collated batch (B, K, H, W), (B, K, H/2, W/2), sample by sample."""
    samples = [farnet_sample(c[:, 0], c[:, 1], sigma, size) for c in coords]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the median is printed")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts for ours")
    p.add_argument("--size", type=int, nargs=2, default=[800, 640], metavar=("H", "W"))
    p.add_argument("--landmarks", type=int, default=19)
    args = p.parse_args()
    h, w = args.size
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    coords = rng.uniform([0, 0], [w, h], size=(args.batch, args.landmarks, 2)).astype(np.float32)  # 0-based, ours
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

    def reference():
        farnet_batch(coords + 1, sigma, (h, w))  # their grid is 1-based: our pixel j is their j + 1

    # The port computes the same Gaussian as ours at full resolution (their 1-based grid shifted back).
    ref_fine = farnet_sample(coords[0, :, 0] + 1, coords[0, :, 1] + 1, sigma, (h, w))[0]
    ours_fine = render_gaussians(c[:1].cpu(), s.cpu(), (h, w), 1)[0]
    assert (ref_fine - ours_fine).abs().max() < 1e-5

    def timed(fn, threads: int | None) -> float:
        if threads is not None:
            torch.set_num_threads(threads)
        fn()  # warm-up: allocation, buffers, thread pool
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    cases = {"reference: FARNet port (numpy, per sample, per landmark)": (reference, None)}
    for t in args.threads:
        cases[f"ours, reused buffers ({dev.type}), {t} torch thread{'s' * (t > 1)}"] = (ours, t)
    for t in args.threads:
        cases[f"ours, fresh tensors ({dev.type}), {t} torch thread{'s' * (t > 1)}"] = (ours_fresh, t)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (fn, threads) in cases.items():
            times[name].append(timed(fn, threads))
    med = {name: statistics.median(ts) / args.batch for name, ts in times.items()}
    ref = med[next(iter(cases))]

    n = args.batch
    print(
        f"targets for batch {n} × {args.landmarks} landmarks at {h}×{w} and {h // 2}×{w // 2}, σ = {sigma} px; "
        f"median of {args.rounds} interleaved rounds; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    for name, t in med.items():
        print(f"  {name:<62} {1000 * t:9.2f} ms/sample  {ref / t:7.1f}x vs reference")
    if len(args.threads) > 1:
        lo, hi = args.threads[0], args.threads[-1]
        for kind in ("reused buffers", "fresh tensors"):
            a = med[f"ours, {kind} ({dev.type}), {lo} torch thread{'s' * (lo > 1)}"]
            b = med[f"ours, {kind} ({dev.type}), {hi} torch thread{'s' * (hi > 1)}"]
            print(f"  ours, {kind}: {hi} threads take {b / a:.2f}x the time of {lo}")


if __name__ == "__main__":
    main()
