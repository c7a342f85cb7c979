"""What a recipe costs, measured once per trial for the accuracy/cost comparison.

    cost_figures(model, input_size=(800, 640), device)
    # {"cost/params_m": 63.6, "cost/gflops": 313.5, "cost/latency_ms": ...}  (FARNet-densenet121)

`cost/gflops` is PyTorch's own FLOP count (torch.utils.flop_counter) of one forward pass of a
single image at the trial's input size, where a multiply-add counts as 2 FLOPs; it is counted on
the meta device, so it costs no compute. `cost/latency_ms` is the median forward time of one
image on the trial's device, in eval mode without gradients.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def params_m(model: nn.Module) -> float:
    """Trainable parameters in millions: a backbone's frozen ImageNet classifier is not part of the recipe."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6


def forward_gflops(model: nn.Module, input_size: tuple[int, int]) -> float:
    """FLOPs of one forward pass of a (1, 1, H, W) image, in 1e9, counted without running the model."""
    meta = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(1, 1, *input_size, device="meta"))
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def latency_ms(
    model: nn.Module, input_size: tuple[int, int], device, budget_s: float = 2.0, max_runs: int = 20
) -> float:
    """Median forward time of one image; runs until max_runs or the time budget (at least 3 runs)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 1, *input_size, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else (lambda: None)
    model(x)  # warm-up: allocator, cuDNN algorithm choice
    sync()
    times, start = [], time.perf_counter()
    while len(times) < max_runs and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - t0)
    model.train(was_training)
    return 1000 * statistics.median(times)


def cost_figures(model: nn.Module, input_size: tuple[int, int], device) -> dict[str, float]:
    return {
        "cost/params_m": params_m(model),
        "cost/gflops": forward_gflops(model, input_size),
        "cost/latency_ms": latency_ms(model, input_size, device),
    }
