"""GPU training throughput: FARNet at 800×640 by `train.precision` / `train.channels_last`, and two trainers on one GPU.

Part 1 times the trainer's own step (`trainables.trainer.train_step`: forward passes under
autocast, the EWC loss against targets rendered on the GPU in fp32, backward, Adam) for
FARNet-densenet121 at width 1.0 (random init, `model.weights: none`), 19 landmarks, 800×640
input, at each batch size, in fp32, bf16 and bf16 + channels_last. Each batch of uint8 images
crosses from pinned memory with a non-blocking copy and is normalised on the GPU, as in `fit`.
After warm-up steps (allocator, cuDNN algorithm choice) the timed steps run between two
torch.cuda.synchronize calls. Reported: images/s, peak allocated memory, and the GPU's mean
utilisation over the timed steps (nvidia-smi sampled every 100 ms in the background).

Part 2 runs `fit` in two processes at once on the same GPU (what `resources.gpus_per_worker:
0.5` lets Ray do), on a small phantom config (the quickstart's U-Net at width 1.0, 128×104,
batch 4), and compares each one's training images/s (training images / median epoch time,
epoch 1 left out) alone and together.

Only torch, torchvision, numpy and Pillow are needed (through trainables/), not Ray or MLflow.

    python benchmarks/gpu_throughput.py --out results/        # on a GPU machine, about 3–4 minutes
    python benchmarks/gpu_throughput.py --device cpu --size 64 64 --batches 1 --steps 1 --warmup 1 \\
        --fit-epochs 2 --fit-train 8 --threads 1               # a smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from trainables.config import TrialConfig
from trainables.data.dataset import normalize
from trainables.losses import LOSSES
from trainables.models import build_model
from trainables.objective import HeadsLoss
from trainables.precision import grad_scaler, to_layout
from trainables.registry import OPTIMIZERS
from trainables.trainer import fit, load_split, train_step

K = 19
ROOT = Path(__file__).resolve().parents[1]  # the repository: trainer processes import trainables from it
VARIANTS = [
    ("fp32", False, False),
    ("bf16", False, False),
    ("bf16", True, False),
]  # (precision, channels_last, compile)
COMPILED = [("fp32", False, True), ("bf16", False, True), ("bf16", True, True)]  # with --compile: train.compile


class GpuSampler:
    """Mean GPU utilisation (%) while the block runs: nvidia-smi every 100 ms, else torch.cuda.utilization()."""

    def __init__(self, enabled: bool):
        self.enabled, self.samples, self._proc, self._thread = enabled, [], None, None

    def __enter__(self):
        if not self.enabled:
            return self
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        else:
            self._stop = threading.Event()

            def poll():
                while not self._stop.wait(0.1):
                    try:
                        self.samples.append(float(torch.cuda.utilization()))
                    except Exception:  # no NVML: no figure
                        return

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            out, _ = self._proc.communicate(timeout=10)
            self.samples = [float(x) for x in out.split() if x.replace(".", "", 1).isdigit()]
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def farnet_config(
    batch: int, precision: str, channels_last: bool, size: tuple[int, int], compile: bool = False
) -> TrialConfig:
    return TrialConfig.from_dict(
        {
            "model": {"name": "farnet", "backbone": "densenet121", "weights": "none", "width": 1.0},
            "data": {"input_size": list(size), "num_landmarks": K},
            "target": {"sigma": 10.0},
            "loss": {"type": "ewc", "alpha": 40.0},
            "optim": {"name": "adam", "lr": 1e-4},
            "train": {"batch_size": batch, "precision": precision, "channels_last": channels_last, "compile": compile},
        }
    )


def step_throughput(cfg: TrialConfig, device: torch.device, warmup: int, steps: int) -> dict:
    """Images/s of the trainer's step for cfg on device, with peak memory and GPU utilisation."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    b, (h, w) = cfg.train.batch_size, cfg.data.input_size
    precision, channels_last = cfg.train.precision, cfg.train.channels_last
    torch.manual_seed(0)
    model = to_layout(build_model(cfg.model, K).to(device), channels_last)
    run_model = torch.compile(model) if cfg.train.compile else model  # as `fit` does; warm-up pays the compilation
    optimizer = OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)
    scaler = grad_scaler(device, precision)
    heads_loss = HeadsLoss(LOSSES[cfg.loss.type], cfg, tuple(model.strides))
    sigma = torch.full((K,), cfg.target.sigma, device=device)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (b, 1, h, w), dtype=torch.uint8, generator=gen)
    coords = torch.rand(b, K, 2, generator=gen) * torch.tensor([w - 1.0, h - 1.0])
    if cuda:
        pixels, coords = pixels.pin_memory(), coords.pin_memory()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def one() -> torch.Tensor:
        images = to_layout(normalize(pixels.to(device, non_blocking=cuda)), channels_last)
        per_landmark, _ = train_step(
            run_model, images, coords.to(device, non_blocking=cuda), sigma, heads_loss, optimizer, scaler, precision
        )
        return per_landmark

    t0 = time.perf_counter()
    for _ in range(warmup):
        one()
    sync()
    warmup_s = time.perf_counter() - t0
    with GpuSampler(cuda) as util:
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = one()
        sync()
        elapsed = time.perf_counter() - t0
    out = {
        "batch": b,
        "precision": precision,
        "channels_last": channels_last,
        "compile": cfg.train.compile,
        "warmup_s": warmup_s,
        "img_s": b * steps / elapsed,
        "step_ms": 1000 * elapsed / steps,
        "loss": loss.mean().item(),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "gpu_util_pct": util.mean,
    }
    # Drop the model and optimizer before empty_cache (rebound, not `del`: one() refers to them).
    model = run_model = optimizer = heads_loss = None
    if cuda:
        torch.cuda.empty_cache()
    return out


def small_fit_config(root: str, seed: int, device: str, epochs: int, num_train: int) -> dict:
    """The quickstart trial at width 1.0 on a phantom of num_train training images, no final test."""
    return {
        "model": {"name": "unet", "width": 1.0},
        "data": {
            "dataset": "phantom",
            "root": root,
            "input_size": [128, 104],
            "phantom": {"num_train": num_train, "num_test1": 16, "num_test2": 16, "image_size": [480, 388], "seed": 0},
        },
        "target": {"sigma": 3.0},
        "loss": {"type": "mse"},
        "optim": {"lr": 1e-3},
        "train": {"epochs": epochs, "batch_size": 4, "seed": seed, "device": device, "threads": 4},
        "eval": {"split": "", "preview": 0},
    }


def fit_worker(cfg_json: str, result: str) -> None:
    """One trainer process: fit, then write its epoch times and images/s to `result`."""
    cfg = TrialConfig.from_dict(json.loads(cfg_json))
    epochs: list[dict] = []
    fit(cfg, lambda m, c: epochs.append(m))
    steady = [m["cost/epoch_s"] for m in epochs[1:]] or [epochs[0]["cost/epoch_s"]]
    n = cfg.data.phantom.num_train
    Path(result).write_text(
        json.dumps(
            {
                "epoch_s": [m["cost/epoch_s"] for m in epochs],
                "img_s": n // cfg.train.batch_size * cfg.train.batch_size / statistics.median(steady),
            }
        )
    )


def run_fits(cfgs: list[dict], tmp: Path, label: str, cuda: bool) -> tuple[list[dict], float | None]:
    """Start one trainer process per config at once, wait for all; -> their results and the mean GPU utilisation."""
    procs, results = [], []
    with GpuSampler(cuda) as util:
        for i, cfg in enumerate(cfgs):
            result = tmp / f"{label}-{i}.json"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            procs.append(
                (
                    subprocess.Popen([sys.executable, __file__, "--fit-worker", json.dumps(cfg), str(result)], env=env),
                    result,
                )
            )
        for proc, result in procs:
            if proc.wait() != 0:
                raise RuntimeError(f"{label}: a trainer process failed (exit {proc.returncode})")
            results.append(json.loads(result.read_text()))
    return results, util.mean


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, nargs=2, default=[800, 640], metavar=("H", "W"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--fit-epochs", type=int, default=8)
    p.add_argument("--fit-train", type=int, default=192, help="phantom training images per trainer")
    p.add_argument("--skip", nargs="*", default=[], choices=["steps", "share"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads of part 1 (0 = torch's default)")
    p.add_argument("--compile", action="store_true", help="also time each variant with train.compile (torch.compile)")
    p.add_argument("--out", default="", help="folder for gpu_throughput.json")
    p.add_argument("--fit-worker", nargs=2, metavar=("CONFIG_JSON", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.fit_worker:
        fit_worker(*args.fit_worker)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    out = Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "steps": [],
        "share": {},
    }

    def save() -> None:
        (out / "gpu_throughput.json").write_text(json.dumps(report, indent=2))

    print(
        f"torch {report['torch']} on {report['device']}; TF32 convolutions {report['cudnn_allow_tf32']}, "
        f"TF32 matmuls {report['matmul_allow_tf32']} (torch's defaults; fp32 below runs under them)",
        flush=True,
    )
    if "steps" not in args.skip:
        print(
            f"FARNet-densenet121 width 1.0, {K} landmarks, {args.size[0]}×{args.size[1]}, Adam, EWC: "
            f"{args.warmup} warm-up + {args.steps} timed steps",
            flush=True,
        )
        for batch in args.batches:
            base = None
            for precision, channels_last, compiled in VARIANTS + (COMPILED if args.compile else []):
                name = (
                    f"batch {batch} {precision}{' + channels_last' if channels_last else ''}"
                    f"{' + compile' if compiled else ''}"
                )
                try:
                    r = step_throughput(
                        farnet_config(batch, precision, channels_last, tuple(args.size), compiled),
                        device,
                        args.warmup,
                        args.steps,
                    )
                except Exception as e:  # an OOM or a missing kernel ends this row, not the run
                    traceback.print_exc()
                    report["steps"].append(
                        {
                            "batch": batch,
                            "precision": precision,
                            "channels_last": channels_last,
                            "compile": compiled,
                            "error": repr(e),
                        }
                    )
                    save()
                    continue
                base = base or (r["img_s"] if precision == "fp32" else None)
                report["steps"].append(r)
                save()
                util = f"{r['gpu_util_pct']:.0f} %" if r["gpu_util_pct"] is not None else "n/a"
                peak = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a"
                ratio = f"{r['img_s'] / base:.2f}x fp32" if base else ""
                print(
                    f"  {name:<44} {r['img_s']:8.2f} img/s {r['step_ms']:8.1f} ms/step  peak {peak:>9}  "
                    f"GPU util {util:>6}  loss {r['loss']:.4f}  warm-up {r['warmup_s']:.0f} s  {ratio}",
                    flush=True,
                )
        if cuda:  # not what fit does (it leaves cudnn.benchmark off): how much cuDNN's autotuner would add
            torch.backends.cudnn.benchmark = True
            batch, base = args.batches[-1], None
            for precision, channels_last, _ in (VARIANTS[0], VARIANTS[-1]):
                try:
                    r = step_throughput(
                        farnet_config(batch, precision, channels_last, tuple(args.size)),
                        device,
                        args.warmup,
                        args.steps,
                    )
                except Exception as e:
                    traceback.print_exc()
                    r = {"error": repr(e)}
                report["steps"].append({**r, "cudnn_benchmark": True})
                save()
                if "img_s" in r:
                    base = base or r["img_s"]
                    print(
                        f"  batch {batch} {precision}{' + channels_last' if channels_last else ''}, cudnn.benchmark: "
                        f"{r['img_s']:8.2f} img/s  peak {r['peak_gib']:.1f} GiB  {r['img_s'] / base:.2f}x fp32",
                        flush=True,
                    )
            torch.backends.cudnn.benchmark = False
    if "share" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            os.environ["LANDMARK_STUDY_CACHE"] = str(tmp / "cache")  # the processes share one image cache
            cfgs = [
                small_fit_config(str(tmp / "phantom"), seed, args.device, args.fit_epochs, args.fit_train)
                for seed in (0, 1)
            ]
            first = TrialConfig.from_dict(cfgs[0])
            for split in ("train", "test1"):
                load_split(first, split)  # generate the phantom and fill the cache before the race
            print(
                f"two trainers on one device: quickstart U-Net width 1.0, 128×104, batch 4, "
                f"{args.fit_train} phantom training images, {args.fit_epochs} epochs each",
                flush=True,
            )
            alone = []
            for i, cfg in enumerate(cfgs):
                (r,), util = run_fits([cfg], tmp, f"alone{i}", cuda)
                alone.append({**r, "gpu_util_pct": util})
            together, util = run_fits(cfgs, tmp, "together", cuda)
            report["share"] = {"alone": alone, "together": together, "together_gpu_util_pct": util}
            save()
            for i in range(2):
                a, t = alone[i]["img_s"], together[i]["img_s"]
                print(f"  trainer {i}: alone {a:8.1f} img/s, together {t:8.1f} img/s ({t / a:.2f}x)", flush=True)
            total = sum(t["img_s"] for t in together)
            pct = lambda x: "n/a" if x is None else f"{x:.0f} %"  # noqa: E731
            print(
                f"  together: {total:.1f} img/s in all = {total / statistics.fmean(a['img_s'] for a in alone):.2f}x "
                f"one trainer alone; GPU util alone {pct(alone[0]['gpu_util_pct'])} and "
                f"{pct(alone[1]['gpu_util_pct'])}, together {pct(util)}",
                flush=True,
            )
    save()


if __name__ == "__main__":
    main()
