"""Per-trial start-up cost: the same quickstart trials through `fit` directly vs through `study.run`.

The four trial configs are the grid of a finite version of search_spaces/quickstart.yaml's space
(`optim.lr` ∈ {1e-3, 3e-3} × `target.schedule` ∈ {fixed (σ 3), adaloss}), in the grid sampler's
seeded order (study trial n takes point n), so both paths train exactly these configs.

    bare:      `trainables.fit` on each config in this process, one after another, 1 torch thread
               (what a 1-CPU Ray Train worker sets); the data generated and cached beforehand
    platform:  `python -m study.run SPEC` in a subprocess on a fresh study folder (a local Ray, the
               MLflow SQLite store, no early stopping), max concurrency 1, then the spec's default (2)

For each `--epochs` value it prints bare wall, platform wall (the whole subprocess: Python start,
imports, Ray start, the trials, MLflow's comparison, Ray shutdown), their ratio, and the fixed
cost per trial, (platform − bare) / trials, and one at a time the cost inside a trial (its start-to-end
less a bare trial); and, read from the study's progress lines (1 s
resolution), where a trial's seconds go: Ray up to the first trial start, trial start to its first
epoch result, the epochs after, last epoch to trial end, trial end to the next start.

    python benchmarks/platform_overhead.py [--epochs 1 10] [--concurrency 1 0] [--trials 4]
                                           [--set base.data.phantom.num_train=8 ...]

`--concurrency 0` is the spec's own (quickstart: 2 at a time). `--set` overrides the spec (dotted,
as `study.run --set`); the bare path reads the same spec.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# A finite copy of quickstart.yaml's space: 4 grid points, both schedules, two learning rates.
GRID_SPACE = {
    "optim.lr": {"choice": [1.0e-3, 3.0e-3]},
    "target.schedule": {"choice": ["fixed", "adaloss"]},
    "target.sigma": {"choice": [3.0], "when": {"target.schedule": "fixed"}},
}
LINE = re.compile(r"^\[(\d+):(\d+)\] (start|epoch|finished)\s+(\S+)(?:\s+(\d+)/)?")


def write_spec(folder: Path, epochs: int, concurrency: int, trials: int, overrides: list[str]) -> Path:
    """The benchmark's spec: quickstart.yaml with the grid space, no early stopping, its own storage."""
    spec = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    spec["space"] = GRID_SPACE
    spec["study"].update(name="overhead", sampler="grid", trials=trials, scheduler={"type": "none"},
                         storage=str(folder / "studies"))
    if concurrency:
        spec["study"]["concurrency"] = concurrency
    spec["base"]["train"]["epochs"] = epochs
    for item in overrides:
        path, _, value = item.partition("=")
        node = spec
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(value)
    path = folder / f"overhead_e{epochs}_c{concurrency}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trial_configs(spec_path: Path) -> list:
    """The configs the study's grid sampler gives its first `study.trials` trials, in its order."""
    from study.search import ConditionalGridSampler
    from study.spec import load_spec

    spec = load_spec(str(spec_path))
    points = ConditionalGridSampler(spec.space, spec.study.seed).points  # trial n takes point n
    return [spec.trial_config(point) for point in points[: spec.study.trials]]


def run_bare(configs: list) -> tuple[float, float]:
    """(wall, training seconds) of `fit` on each config in turn, at 1 torch thread."""
    import torch

    from trainables import fit

    torch.set_num_threads(1)
    epoch_s = []
    t0 = time.perf_counter()
    for cfg in configs:
        fit(cfg, lambda metrics, checkpoint_dir: epoch_s.append(metrics["cost/epoch_s"]))
    return time.perf_counter() - t0, sum(epoch_s)


def run_platform(spec_path: Path) -> tuple[float, list[str]]:
    """(wall, stdout lines) of `python -m study.run spec_path` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "study.run", str(spec_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(f"{spec_path.name}: study.run exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return wall, run.stdout.splitlines()


def phases(lines: list[str]) -> dict[str, float]:
    """Median seconds of each phase of a trial, read from the progress lines (1 s resolution)."""
    start, first, last, end = {}, {}, {}, {}
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        t, kind, trial = int(m[1]) * 60 + int(m[2]), m[3], m[4]
        if kind == "start":
            start[trial] = t
        elif kind == "epoch":
            first.setdefault(trial, t)
            last[trial] = t
        else:
            end[trial] = t
    trials = [t for t in start if t in end and t in first]
    if not trials:
        return {}
    starts, ends = sorted(start[t] for t in trials), sorted(end[t] for t in trials)
    med = statistics.median
    gaps = [s - e for s, e in zip(starts[1:], ends) if s >= e]  # a trial's end to the next start, one at a time
    return {"to 1st trial": min(starts),
            "start→end": med(end[t] - start[t] for t in trials),
            "start→1st epoch": med(first[t] - start[t] for t in trials),
            "1st→last epoch": med(last[t] - first[t] for t in trials),
            "last epoch→end": med(end[t] - last[t] for t in trials),
            "end→next start": med(gaps) if gaps else float("nan")}


def study_seconds(lines: list[str]) -> float | None:
    """run_study's own wall, from the line '4 trials (0 failed or diverged) in 83 s'."""
    for line in lines:
        m = re.match(r"^\d+ trials \(.*\) in (\d+) s$", line)
        if m:
            return float(m[1])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 10])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 0], help="0 = the spec's own")
    p.add_argument("--trials", type=int, default=4, help="at most 4 (the grid's points)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    args = p.parse_args()
    uptime = lambda: os.getloadavg()  # noqa: E731 - the machine is shared: print its load with each figure
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for epochs in args.epochs:
            specs = {}
            for c in args.concurrency:
                (folder / f"e{epochs}c{c}").mkdir()
                specs[c] = write_spec(folder / f"e{epochs}c{c}", epochs, c, args.trials, args.overrides)
            configs = trial_configs(next(iter(specs.values())))
            run_bare([configs[0].with_values({"train.epochs": 1})])  # generates the phantom data and fills the image cache that both paths read
            load0 = uptime()[0]
            bare, train_s = run_bare(configs)
            print(f"epochs {epochs}: bare {bare:.1f} s for {len(configs)} trials ({train_s:.1f} s in epochs), "
                  f"load {load0:.2f}", flush=True)
            for c, spec_path in specs.items():
                load = uptime()[0]
                wall, lines = run_platform(spec_path)
                ph = phases(lines)
                rows.append((epochs, c, bare, wall, study_seconds(lines), len(configs), load, ph))
                print(f"  concurrency {c or 'spec'}: platform {wall:.1f} s, load {load:.2f}", flush=True)

    print(f"\nsame {args.trials} quickstart grid trials (U-Net 0.25, 128×104, batch 4), bare `fit` at 1 thread vs "
          f"`python -m study.run` (local Ray, no early stopping); overrides {args.overrides or 'none'}")
    print(f"{'epochs':>6} {'at once':>7} {'bare s':>7} {'platform s':>10} {'(in study)':>10} {'ratio':>6} "
          f"{'fixed s/trial':>13} {'in a trial':>10} {'load':>5}")
    for epochs, c, bare, wall, inside, n, load, ph in rows:
        shown = "spec" if c == 0 else str(c)
        # one at a time, a trial's own fixed cost: its start to its end (median) less a bare trial's mean
        own = ph["start→end"] - bare / n if c == 1 and ph else float("nan")
        print(f"{epochs:>6} {shown:>7} {bare:7.1f} {wall:10.1f} {inside if inside is not None else float('nan'):10.0f} "
              f"{wall / bare:6.2f} {(wall - bare) / n:13.1f} {own:10.1f} {load:5.2f}")
    print("(fixed s/trial: (platform - bare) / trials, the study's own start and end included; in a trial: one at a "
          "time, a trial's start-to-end line less a bare trial, ±1 s)")
    print("\nwhere a platform trial's seconds go (median over its trials, from the progress lines, ±1 s):")
    keys = ["to 1st trial", "start→1st epoch", "1st→last epoch", "last epoch→end", "end→next start"]
    print(f"{'epochs':>6} {'at once':>7} " + " ".join(f"{k:>16}" for k in keys))
    for epochs, c, _, _, _, _, _, ph in rows:
        shown = "spec" if c == 0 else str(c)
        print(f"{epochs:>6} {shown:>7} " + " ".join(f"{ph.get(k, float('nan')):16.0f}" for k in keys))


if __name__ == "__main__":
    main()
