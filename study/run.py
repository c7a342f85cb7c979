"""Run a study: validate a spec, search it with Ray Tune + Optuna, record every trial in MLflow.

    python -m study.run search_spaces/quickstart.yaml
    python -m study.run SPEC [--dry-run] [--resume [--force]] [--set path=value ...] [--address ADDR]
                             [--tracking-uri URI] [--storage PATH_OR_URI] [--trials N] [--verbose]

Exit status: 0 when the study ran, 1 when every trial failed, 2 for bad input (nothing started),
130 when interrupted by Ctrl-C, 143 by SIGTERM and 129 by SIGHUP (a batch system's stop, a closed
terminal): the state is saved and --resume continues it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time

from study.preflight import preflight, redact, use_tracking_credentials
from study.spec import Spec, SpecError, StudyError, load_spec
from trainables.config import flatten

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
PREVIEW_TRIALS = 3  # sampled configs shown by --dry-run
PROG = "python -m study.run"  # how help and messages name the command (landmark-study run passes its own)


def parse_args(argv: list[str] | None, prog: str = PROG) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="study spec YAML, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resolved study and exit")
    p.add_argument("--resume", action="store_true", help="continue the study of this name from its storage")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue even though the spec changed (base: and resources: edits apply "
        "to the trials still to run)",
    )
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="take over the study's lock from a driver on another host that is gone for good",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field, e.g. --set study.trials=8 --set base.train.epochs=3",
    )
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in the storage folder)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="study storage folder or URI, shared by all nodes on a cluster (overrides study.storage)",
    )
    p.add_argument("--trials", type=int, default=None, help="number of trials (overrides study.trials)")
    p.add_argument("--verbose", action="store_true", help="stream the Ray workers' own log lines here too")
    return p.parse_args(argv)


def describe(spec: Spec) -> str:
    s, r = spec.study, spec.resources
    grid = f"; the grid has {len(spec.grid())} points" if s.sampler == "grid" else ""
    custom = "".join(f" + {v:g} {k}" for k, v in r.custom.items())
    lines = [
        f"study {s.name!r} from {spec.source}",
        f"  objectives: {', '.join(f'{o.mode} {o.metric}' for o in s.objectives)}",
        f"  search: {s.trials} trials"
        + (
            f" (configurations), each trained {s.repeats} times (train.seed + 0..{s.repeats - 1}): "
            f"{spec.total_trials} Tune trials"
            if s.repeats > 1
            else ""
        )
        + f", sampler {s.sampler} (seed {s.seed}), "
        f"early stopping {spec.describe_scheduler()}{grid}",
        f"  per trial: {r.workers} Train worker(s) × {r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU{custom}",
        f"  storage: {redact(spec.location)}",
        "  space (in sampling order):",
    ]
    lines += [f"    {p.path:<26} {p.describe()}" for p in spec.space.values()] or ["    (empty: one config)"]
    lines.append("  base config:")
    lines += [f"    {k:<32} {v}" for k, v in flatten(spec.base).items()]
    return "\n".join(lines)


def preview(spec: Spec, n: int = PREVIEW_TRIALS) -> str:
    """The first n draws of the spec's own sampler (seeded), as the dotted values each trial sets."""
    import optuna  # lazy for start-up time, as the Ray imports below

    from study.search import SpaceSampler, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=make_sampler(spec), directions=["minimize"] * len(spec.study.objectives))
    lines = [f"  first {n} sampled trials (sampler {spec.study.sampler}, seed {spec.study.seed}):"]
    for i in range(n if spec.space else 0):
        trial = study.ask()
        SpaceSampler(spec.space)(trial)
        lines.append(f"    {i + 1}: " + "  ".join(f"{k}={_short(v)}" for k, v in trial.params.items()))
        study.tell(trial, [0.0] * len(spec.study.objectives))
    return "\n".join(lines) if spec.space else "  (no space: every trial runs the base config)"


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """The command line; prog is how it was called (`landmark-study run`), for help and messages."""
    args = parse_args(argv, prog)
    overrides = list(args.overrides)
    if args.storage:
        overrides.append(f"study.storage={args.storage}")
    if args.trials is not None:
        overrides.append(f"study.trials={args.trials}")
    if args.force and not args.resume:
        print("error: --force only goes with --resume", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        spec = load_spec(args.spec, overrides, check_data=not args.dry_run)
    except SpecError as e:
        return _spec_problems(e)
    print(describe(spec), flush=True)
    for n in spec.notes:
        print(f"note: {n}", file=sys.stderr)
    for w in spec.warnings:
        print(f"warning: {w} (a real run needs it)", file=sys.stderr)
    if args.dry_run:
        print(preview(spec))
        print("dry run: the spec is valid; nothing was started")
        return 0
    # user:password in a tracking URI go to MLflow's own variables: nothing prints or saves them.
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri:
        tracking_uri = use_tracking_credentials(tracking_uri)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # the bare URI is passed on explicitly
    problems = preflight(spec, tracking_uri, args.address)
    if problems:
        print(
            f"error: {len(problems)} problem(s) with where the study would run; nothing was started:", file=sys.stderr
        )
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from study.stop import Stopped
    from study.tuner import run_study  # lazy: imports Ray (seconds), only once the spec is known to be good

    t0 = time.monotonic()
    try:
        result = run_study(
            spec,
            address=args.address,
            tracking_uri=tracking_uri,
            resume=args.resume,
            force=args.force,
            verbose=args.verbose,
            break_lock=args.break_lock,
        )
    except SpecError as e:  # resources the cluster cannot provide
        return _spec_problems(e)
    except (StudyError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Stopped as e:  # before Tune ran: no trial had started
        print(
            f"\n{e}: stopped before the search began; nothing new ran (the same command starts it again)",
            file=sys.stderr,
        )
        return 128 + e.signum
    wall = time.monotonic() - t0

    import pandas as pd  # lazy: needed only once the study ran, as dashboards.publish (MLflow)

    from dashboards.publish import python_command, ui_command, ui_url
    from study.study_run import experiment_name

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print("\ntrials, best first:")
        print(result.table.to_string(index=False))
    if result.front:
        print(f"\n{result.front}")
    n = len(result.table)
    print(f"\n{n} trials ({result.num_errors} failed or diverged) in {wall:.0f} s")
    print(f"study state:  {result.study_dir}")
    print(
        f"MLflow:       {result.tracking_uri}  (experiment {experiment_name(spec)!r}, "
        f"{n + 1} runs: the study and one per trial; the comparison is in the study run's pareto/)"
    )
    # Every command printed below is quoted for a POSIX shell (shlex): a storage path with a space pastes as it is.
    uri = result.tracking_uri
    print(f"open the UI:  {ui_command(uri)}")
    print(f"              or: {python_command()} -m dashboards.ui {shlex.join(['--tracking-uri', uri])}")
    print(f"then open:    {ui_url(uri, result.experiment_id, spec.study.name)}")
    print(
        "              (the study's trials with their objectives and costs; MLflow's own start page is its GenAI view)"
    )
    print(
        f"the front:    {python_command()} -m dashboards.pareto {shlex.join([spec.study.name, '--tracking-uri', uri])}"
    )
    # This interpreter, as named above (no activated venv needed), unless called as `landmark-study run`.
    again = resume_command(f"{python_command()} -m study.run" if prog == PROG else prog, argv)
    if result.undelivered:
        print(
            f"\nMLflow did not answer: {result.undelivered} results are queued in {result.study_dir}/"
            f"mlflow_outbox.jsonl and not in MLflow yet; once the server is back, deliver them with\n  {again}",
            file=sys.stderr,
        )
    if result.interrupted:
        by = f" by {result.stopped_by}" if result.stopped_by else ""
        print(f"\ninterrupted{by}: the state is saved; continue with\n  {again}", file=sys.stderr)
        return 128 + signal.Signals[result.stopped_by] if result.stopped_by else EXIT_INTERRUPTED
    return 1 if n and result.num_errors == n else 0


def resume_command(prog: str, argv: list[str] | None) -> str:
    """This run's own command line with --resume, quoted for a POSIX shell: the same spec, storage,
    overrides and tracking URI, so it continues this study. A password in a URI is shown as ***
    (nothing prints one): put it back, or give it in MLFLOW_TRACKING_PASSWORD instead.

        resume_command("python -m study.run", ["s.yaml", "--storage", "/tmp/a b"])
        -> "python -m study.run s.yaml --storage '/tmp/a b' --resume"
    """
    given = sys.argv[1:] if argv is None else argv

    def shown(arg: str) -> str:
        flag, eq, value = arg.partition("=")
        return f"{flag}={redact(value)}" if eq and flag.startswith("--") else redact(arg)

    return " ".join([prog, shlex.join(shown(a) for a in given if a != "--resume"), "--resume"])


def _spec_problems(e: SpecError) -> int:
    print(f"error: {len(e.problems)} problem(s) in the spec; nothing was started:", file=sys.stderr)
    for line in e.problems:
        print(f"  {line}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
