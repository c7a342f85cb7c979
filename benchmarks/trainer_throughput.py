"""Trainer throughput: training images per second of `trainables.fit` on each device, side by side.

Runs the quickstart's trial config (U-Net width 0.25, 128×104 input, batch 4, phantom data)
standalone, without Ray, for a few epochs per device and reports the median epoch time.

    python benchmarks/trainer_throughput.py                     # cpu only
    python benchmarks/trainer_throughput.py --devices cpu cuda --epochs 4 --set model.width=1.0
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
import yaml

from trainables import TrialConfig, fit
from trainables.config import apply_overrides


def measure(cfg_dict: dict, device: str) -> dict:
    epochs = []
    fit(TrialConfig.from_dict(cfg_dict), lambda m, c: epochs.append(m), device=device)
    n_train = cfg_dict["data"]["phantom"]["num_train"]
    steady = [m["cost/epoch_s"] for m in epochs[1:]] or [epochs[0]["cost/epoch_s"]]  # epoch 1 warms up
    epoch_s = statistics.median(steady)
    return {"epoch_s": epoch_s, "img_s": n_train / epoch_s, "val/mre_mm": epochs[-1]["val/mre_mm"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", nargs="+", default=["cpu"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (a Ray Train worker with 1 CPU gets 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with open("search_spaces/quickstart.yaml") as f:
        base = yaml.safe_load(f)["base"]
    overrides = {"train.epochs": args.epochs}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    with tempfile.TemporaryDirectory() as tmp:
        overrides["data.root"] = f"{tmp}/phantom"
        cfg = apply_overrides(base, overrides)
        results = {d: measure(cfg, d) for d in args.devices}
    ref = results[args.devices[0]]
    print(
        f"quickstart trial config, {args.epochs} epochs, overrides {args.overrides or 'none'}, "
        f"{args.threads} CPU thread(s)"
    )
    for d, r in results.items():
        print(
            f"  {d:<5} {r['epoch_s']:7.3f} s/epoch  {r['img_s']:8.1f} img/s  "
            f"x{r['img_s'] / ref['img_s']:.1f} vs {args.devices[0]}  (val/mre_mm {r['val/mre_mm']:.2f})"
        )


if __name__ == "__main__":
    main()
