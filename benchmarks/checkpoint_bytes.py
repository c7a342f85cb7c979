"""Checkpoint bytes written per trial: every epoch (before issue 18) vs `train.checkpoint_*` (after).

Builds the spec's base model (default: search_spaces/farnet.yaml, FARNet-densenet121 at width
1.0; `model.weights: none`, which changes no tensor's size) and its optimiser, gives the
optimiser its state by one step with zero gradients (Adam's two moment buffers per parameter),
and serialises exactly what `fit` puts in checkpoint.pt (`trainables.trainer.checkpoint_state`)
with torch.save into a byte counter. Nothing is estimated from parameter counts.

    before: a checkpoint every epoch, model + optimiser (+ σ schedule, RNG, epoch)
    after:  a checkpoint every `checkpoint_every`-th epoch (0 = ceil(epochs / 30)), the last
            epoch, and each epoch that improves the primary objective; every one complete

How many epochs improve the best-so-far primary objective depends on the run, not on the
config: the after-figure is printed for several counts of such epochs off the cadence. The
preview.npz beside each checkpoint (the arrays behind the trial's pictures) is left out; its
uncompressed upper bound is printed once.

    python benchmarks/checkpoint_bytes.py [--spec search_spaces/farnet.yaml] [--improving 0 10 30 60]
"""

from __future__ import annotations

import argparse

import torch
import yaml

from trainables.checkpoint import CheckpointPolicy
from trainables.config import TrialConfig, apply_overrides
from trainables.models import build_model
from trainables.precision import grad_scaler
from trainables.registry import OPTIMIZERS
from trainables.schedules import SCHEDULES
from trainables.trainer import checkpoint_state


class ByteCounter:
    """A write-only file that counts what torch.save writes into it."""

    def __init__(self):
        self.n = 0

    def write(self, b) -> int:
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


def saved_bytes(obj) -> int:
    out = ByteCounter()
    torch.save(obj, out)
    return out.n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="search_spaces/farnet.yaml")
    p.add_argument(
        "--improving",
        type=int,
        nargs="+",
        default=[0, 10, 30, 60],
        help="epochs off the cadence that improve the primary objective",
    )
    args = p.parse_args()
    with open(args.spec) as f:
        base = yaml.safe_load(f)["base"]
    cfg = TrialConfig.from_dict(apply_overrides(base, {"model.weights": "none", "data.root": ""}))
    k, epochs = cfg.data.num_landmarks, cfg.train.epochs

    torch.manual_seed(0)
    model = build_model(cfg.model, k)
    optimizer = OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()  # Adam creates its state (step, exp_avg, exp_avg_sq) on the first step
    schedule = SCHEDULES[cfg.target.schedule](cfg.target, k, cfg.data.input_size)
    policy = CheckpointPolicy(cfg.train.checkpoint_every, epochs, "val/mre_mm", "min")
    state = checkpoint_state(
        model, optimizer, grad_scaler(torch.device("cpu"), cfg.train.precision), schedule, policy, 1
    )
    before_keys = ("model", "optimizer", "schedule", "rng", "epoch")  # what the trainer saved before
    full_before = saved_bytes({key: state[key] for key in before_keys})
    full = saved_bytes(state)
    weights = saved_bytes({"model": state["model"]})
    n_params = sum(t.numel() for t in model.state_dict().values())

    periodic = len({e for e in range(1, epochs + 1) if e % policy.every == 0} | {epochs})
    h, w = cfg.data.input_size
    stride = model.strides[-1]
    preview = cfg.eval.preview * (h * w + 2 * (h // stride) * (w // stride)) + 150 * k * 4  # uint8 + float16 + errors

    gb = 1e9
    print(
        f"{args.spec}: {cfg.model.name}-{cfg.model.backbone} width {cfg.model.width}, {k} landmarks, "
        f"{cfg.optim.name}, {epochs} epochs; {n_params / 1e6:.2f} M values in the model's state dict"
    )
    print(
        f"  checkpoint.pt, model + optimiser + σ schedule + RNG (+ best so far, loss scale): {full / gb:.3f} GB "
        f"(weights alone {weights / gb:.3f} GB; before issue 18 {full_before / gb:.3f} GB)"
    )
    print(f"  preview.npz beside each: at most {preview / 1e6:.1f} MB uncompressed (left out below)")
    before = epochs * full_before
    print(f"  before: {epochs} checkpoints (every epoch)                    {before / gb:8.1f} GB per trial")
    every = cfg.train.checkpoint_every or f"0 -> {policy.every}"
    for extra in args.improving:
        n = periodic + extra
        after = n * full
        print(
            f"  after, checkpoint_every {every}: {periodic} periodic + {extra:3d} improving = {n:3d} checkpoints "
            f"{after / gb:8.1f} GB per trial  ({before / after:5.1f}x less)"
        )
    # What keeping the optimiser state out of improvement-only checkpoints would have saved, and why not:
    # such a checkpoint is the newest until the next one, and a restarted Train run resumes from the newest.
    for extra in args.improving[-1:]:
        alt = periodic * full + extra * weights
        print(
            f"  (not done) {extra} improving ones as weights only: {alt / gb:.1f} GB per trial, "
            f"{(periodic + extra) * full / gb - alt / gb:.1f} GB less, but a resume from one would lose Adam's state"
        )


if __name__ == "__main__":
    main()
