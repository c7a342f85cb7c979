"""Per-trial start-up cost: the same quickstart trials through `fit` directly vs through `study.run`.

The four trial configs are the grid of a finite version of search_spaces/quickstart.yaml's space
(`optim.lr` ∈ {1e-3, 3e-3} × `target.schedule` ∈ {fixed (σ 3), adaloss}), in the grid sampler's
seeded order (study trial n takes point n), so both paths train exactly these configs.

    platform:  `python -m study.run SPEC` in a subprocess on a fresh study folder (a local Ray, the
               MLflow SQLite store), with the quickstart's ASHA (grace period 3 epochs, or epochs - 1
               for shorter trials; `--scheduler none` turns it off), one at a time and at the spec's
               concurrency (2); every line it prints is timed as it arrives
    bare:      `trainables.fit` on each config in this process, one after another, at 1 torch thread
               (what a 1-CPU Ray Train worker sets), each for the epochs the platform trained it (ASHA
               stops some trials early); the data generated and cached beforehand

For each row it prints bare wall, platform wall (the whole subprocess: Python start, imports, Ray
start, the trials, MLflow's comparison, Ray shutdown) and their ratio, and:

    study start    command -> the first trial's start line (imports, Ray, the MLflow store, Tune)
    per trial      the platform's fixed cost per trial. One at a time: a trial's start-to-end less the
                   same trial bare (median over trials). At the spec's concurrency c: the trials' span
                   (first start to last end) × c less the bare total, per trial: the slot-seconds a trial
                   costs beyond its training
    study end      the last trial's end line -> the command's exit (the comparison, Ray's shutdown)

and, one at a time, where a trial's seconds go: its start to its first epoch line, its epochs, its last
epoch to its end line, its end to the next trial's start.

    python benchmarks/platform_overhead.py [--epochs 2 10] [--concurrency 1 0] [--trials 4]
                                           [--scheduler asha|none] [--set base.data.phantom.num_train=8 ...]

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
LINE = re.compile(r"^\[\d+:\d+\] (start|epoch|finished|stopped early at epoch \d+)\s+(\S+)(?:\s+(\d+)/)?")


def write_spec(folder: Path, epochs: int, concurrency: int, trials: int, scheduler: str, overrides: list[str]) -> Path:
    """The benchmark's spec: quickstart.yaml with the grid space and its own storage."""
    spec = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    spec["space"] = GRID_SPACE
    spec["study"].update(name="overhead", sampler="grid", trials=trials, storage=str(folder / "studies"))
    if scheduler == "none" or epochs < 2:  # one epoch: nothing for ASHA to stop
        spec["study"]["scheduler"] = {"type": "none"}
    else:  # the quickstart's ASHA; a grace period below the epochs, so that it can stop a trial
        spec["study"]["scheduler"]["grace_period"] = min(spec["study"]["scheduler"]["grace_period"], epochs - 1)
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


def run_bare(configs: list) -> list[float]:
    """Wall seconds of `fit` on each config in turn, at 1 torch thread."""
    import torch

    from trainables import fit

    torch.set_num_threads(1)
    walls = []
    for cfg in configs:
        t0 = time.perf_counter()
        fit(cfg, lambda metrics, checkpoint_dir: None)
        walls.append(time.perf_counter() - t0)
    return walls


def run_platform(spec_path: Path) -> tuple[float, list[tuple[float, str]]]:
    """(wall, [(seconds since launch, line)]) of `python -m study.run spec_path` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.run", str(spec_path)],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stdout]
    proc.wait(timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(
            f"{spec_path.name}: study.run exited {proc.returncode}:\n" + "\n".join(line for _, line in lines[-60:])
        )
    return wall, lines


def trials_of(lines: list[tuple[float, str]]) -> dict[str, dict]:
    """Per trial id, in start order: its start, first and last epoch line times, end time, epochs."""
    trials: dict[str, dict] = {}
    for t, line in lines:
        m = LINE.match(line)
        if not m:
            continue
        kind, tid = m[1], m[2]
        if kind == "start":
            trials[tid] = {"start": t, "params": line.split(tid, 1)[1].strip()}
        elif kind == "epoch":
            trials[tid].setdefault("first", t)
            trials[tid].update(last=t, epochs=int(m[3]))
        else:
            trials[tid]["end"] = t
    return trials


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 10])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 0], help="0 = the spec's own")
    p.add_argument("--trials", type=int, default=4, help="at most 4 (the grid's points)")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    args = p.parse_args()
    rows, bare_walls = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for epochs in args.epochs:
            for c in args.concurrency:
                (folder / f"e{epochs}c{c}").mkdir()
                spec_path = write_spec(
                    folder / f"e{epochs}c{c}", epochs, c, args.trials, args.scheduler, args.overrides
                )
                configs = trial_configs(spec_path)
                if not bare_walls:  # generates the phantom data and fills the image cache both paths read
                    run_bare([configs[0].with_values({"train.epochs": 1})])
                load = os.getloadavg()[0]  # the machine may be shared: each figure with its load
                wall, lines = run_platform(spec_path)
                trials = trials_of(lines)
                # the same configs bare, each for the epochs the platform trained it (grid order = start order)
                ran = [t.get("epochs", 0) for t in trials.values()]
                key = tuple(ran)
                if key not in bare_walls:
                    bare_walls[key] = run_bare(
                        [cfg.with_values({"train.epochs": max(e, 1)}) for cfg, e in zip(configs, ran)]
                    )
                rows.append((epochs, c, ran, bare_walls[key], wall, trials, load))
                print(
                    f"epochs {epochs}, concurrency {c or 'spec'}: platform {wall:.1f} s, bare "
                    f"{sum(bare_walls[key]):.1f} s, epochs run {ran}, load {load:.2f}",
                    flush=True,
                )

    print(
        f"\nsame {args.trials} quickstart grid trials (U-Net 0.25, 128×104, batch 4), bare `fit` at 1 thread vs "
        f"`python -m study.run` (local Ray, scheduler {args.scheduler}); overrides {args.overrides or 'none'}"
    )
    print(
        f"{'epochs':>6} {'at once':>7} {'bare s':>7} {'platform s':>10} {'ratio':>6} {'study start':>11} "
        f"{'per trial':>9} {'study end':>9} {'load':>5}"
    )
    phases = []
    for epochs, c, ran, bare, wall, trials, load in rows:
        ts = list(trials.values())
        start = min(t["start"] for t in ts)
        last_end = max(t["end"] for t in ts)
        if c == 1:
            per_trial = statistics.median(t["end"] - t["start"] - b for t, b in zip(ts, bare))
            starts, ends = [t["start"] for t in ts], [t["end"] for t in ts]
            phases.append(
                (
                    epochs,
                    {
                        "start→1st epoch": statistics.median(t["first"] - t["start"] for t in ts),
                        "1st→last epoch": statistics.median(t["last"] - t["first"] for t in ts),
                        "last epoch→end": statistics.median(t["end"] - t["last"] for t in ts),
                        "end→next start": statistics.median(s - e for s, e in zip(starts[1:], ends))
                        if len(ts) > 1
                        else float("nan"),
                    },
                )
            )
        else:
            slots = c or 2  # the quickstart's concurrency
            per_trial = ((last_end - start) * slots - sum(bare)) / len(ts)
        print(
            f"{epochs:>6} {('spec' if c == 0 else str(c)):>7} {sum(bare):7.1f} {wall:10.1f} {wall / sum(bare):6.2f} "
            f"{start:11.1f} {per_trial:9.1f} {wall - last_end:9.1f} {load:5.2f}"
        )
    print(
        "(per trial: one at a time, a trial's start-to-end line less the same trial bare, median; at the spec's "
        "concurrency c, (the trials' span × c - bare) / trials)"
    )
    if phases:
        keys = list(phases[0][1])
        print("\none at a time, where a platform trial's seconds go (median over its trials, seconds):")
        print(f"{'epochs':>6} " + " ".join(f"{k:>16}" for k in keys))
        for epochs, ph in phases:
            print(f"{epochs:>6} " + " ".join(f"{ph[k]:16.1f}" for k in keys))


if __name__ == "__main__":
    main()
