"""Run a study: validate a spec, search it with Ray Tune + Optuna, record every trial in MLflow.

    python -m study.run search_spaces/quickstart.yaml
    python -m study.run SPEC [--dry-run] [--resume] [--set path=value ...] [--address ADDR]
                             [--tracking-uri URI] [--storage PATH] [--trials N] [--verbose]

Exit status: 0 when the study ran, 1 when every trial failed, 2 for bad input (nothing started).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from study.spec import Spec, SpecError, load_spec

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="study spec YAML, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resolved study and exit")
    p.add_argument("--resume", action="store_true", help="continue the study of this name from its storage")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a spec field, e.g. --set study.trials=8 --set base.train.epochs=3")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in the storage folder)")
    p.add_argument("--storage", default=None, help="study storage folder (overrides study.storage)")
    p.add_argument("--trials", type=int, default=None, help="number of trials (overrides study.trials)")
    p.add_argument("--verbose", action="store_true", help="stream the Ray workers' own log lines here too")
    return p.parse_args(argv)


def describe(spec: Spec) -> str:
    from trainables.config import flatten

    lines = [f"study {spec.study.name!r} from {spec.source}",
             f"  objective: {spec.primary.mode} {spec.primary.metric}; {spec.study.trials} trials, "
             f"sampler {spec.study.sampler} (seed {spec.study.seed})",
             f"  per trial: {spec.resources.workers} Train worker(s) × {spec.resources.cpus_per_worker:g} CPU, "
             f"{spec.resources.gpus_per_worker:g} GPU",
             f"  storage: {spec.storage_path / spec.study.name}",
             "  space:"]
    lines += [f"    {p.path:<24} {p.kind} {p.args}" for p in spec.space.values()] or ["    (empty: one config)"]
    lines.append("  base config:")
    lines += [f"    {k:<32} {v}" for k, v in flatten(spec.base).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.storage:
        overrides.append(f"study.storage={args.storage}")
    if args.trials is not None:
        overrides.append(f"study.trials={args.trials}")
    try:
        spec = load_spec(args.spec, overrides)
    except SpecError as e:
        print(f"error: {len(e.problems)} problem(s) in the spec; nothing was started:", file=sys.stderr)
        for line in e.problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(describe(spec), flush=True)
    if args.dry_run:
        return 0

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from study.tuner import StudyError, run_study  # imports Ray: only once the spec is known to be good

    t0 = time.monotonic()
    try:
        result = run_study(spec, address=args.address, tracking_uri=args.tracking_uri, resume=args.resume,
                            verbose=args.verbose)
    except (StudyError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    wall = time.monotonic() - t0

    import pandas as pd

    from study.tracking import ui_command

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print("\ntrials, best first:")
        print(result.table.to_string(index=False))
    n = len(result.table)
    print(f"\n{n} trials ({result.num_errors} failed) in {wall:.0f} s")
    print(f"study state:  {result.study_dir}")
    print(f"MLflow:       {result.tracking_uri}  (experiment {spec.study.name!r}, "
          f"{n + 1} runs: the study and one per trial)")
    print(f"open the UI:  {ui_command(result.tracking_uri)}")
    print(f"              or: python -m dashboards.ui --tracking-uri {result.tracking_uri}")
    return 1 if n and result.num_errors == n else 0


if __name__ == "__main__":
    sys.exit(main())
