"""The fidelity report: re-check the three papers' claims on phantom data, then write reports/fidelity.md.

    python -m study.fidelity                    # teacher + 3 studies (57 trials) + report: 50 min on 2 CPUs
    python -m study.fidelity --resume           # continue studies that were interrupted
    python -m study.fidelity --report-only      # rebuild the report from the studies already in MLflow
    python -m study.fidelity --tiny --storage /tmp/fid --out /tmp/fid/fidelity.md    # a few minutes: a smoke run

Steps, each printed as it starts:
1. the phantom classification teacher (trainables/pretrain.py), written to <storage>/fidelity/ once;
2. `python -m study.run` on each spec of search_spaces/fidelity/ (adaloss, farnet, crosstask), as a user
   would run them, every trial recorded in MLflow (the studies' store: <storage>/mlflow.db by default);
   the three run in this process on one Ray: a local one started once, or the cluster of --address;
3. the report (dashboards/fidelity.py), from MLflow alone: reports/fidelity.md, fidelity.png beside it,
   and the same files on a run of the MLflow experiment `fidelity-report`.
`--tiny` trains 1 epoch on tiny inputs with one repeat: every claim row is computed, none can be judged.

Exit status: 0 when the report was written, 1 when a study failed, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "search_spaces" / "fidelity"
STUDIES = {"fidelity_adaloss": "adaloss.yaml", "fidelity_farnet": "farnet.yaml", "fidelity_crosstask": "crosstask.yaml"}
NEEDS_TEACHER = ("fidelity_farnet", "fidelity_crosstask")
TEACHER = "teacher_resnet18.pt"
# A smoke run: 1 epoch, 64×32 inputs, a handful of images, one repeat (claims computed, none judged).
TINY = [
    "study.repeats=1",
    "base.train.epochs=1",
    "base.data.input_size=[64,32]",
    "base.data.phantom.num_train=8",
    "base.data.phantom.num_test1=4",
    "base.data.phantom.num_test2=4",
    "base.train.batch_size=4",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default="studies", help="study storage folder, as study.storage (default: studies)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else <storage>/mlflow.db)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("reports/fidelity.md"), help="the report (default: reports/fidelity.md)"
    )
    p.add_argument("--resume", action="store_true", help="continue the fidelity studies (study.run --resume)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from MLflow")
    p.add_argument("--tiny", action="store_true", help="a smoke run in minutes: 1 epoch, tiny inputs, one repeat")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else one local Ray)")
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def teacher(path: Path, tiny: bool) -> dict:
    """Train the phantom classification teacher unless `path` holds one already."""
    from trainables.pretrain import PretrainConfig, pretrain

    figures_file = path.with_suffix(".json")  # its figures, for the report of a later run that reuses it
    if path.exists():
        _log(f"teacher: {path} exists, reused (delete it to train a new one)")
        return json.loads(figures_file.read_text()) if figures_file.exists() else {}
    cfg = PretrainConfig()
    if tiny:
        cfg.epochs, cfg.input_size = 1, (64, 32)
        cfg.phantom.num_train, cfg.phantom.num_test1 = 16, 8
    _log(
        f"teacher: training a {cfg.backbone} to classify phantom poses ({cfg.phantom.num_train} images, "
        f"{cfg.epochs} epochs) -> {path}"
    )
    figures = pretrain(cfg, path, log=lambda m: _log("  " + m))
    figures_file.write_text(json.dumps(figures, indent=1))
    return figures


def run_spec(
    name: str, storage: str, tracking_uri: str | None, teacher_path: Path, resume: bool, tiny: bool, address: str | None
) -> tuple[int, list[str]]:
    """`python -m study.run` on one fidelity spec, in this process (its output passed through);
    (exit status, the command)."""
    from study.run import main as study_run

    args = [str(SPECS / STUDIES[name]), "--storage", storage]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    if address:
        args += ["--address", address]
    if name in NEEDS_TEACHER:
        args += ["--set", f"base.model.weights={teacher_path}"]
    for override in TINY if tiny else []:
        args += ["--set", override]
    if resume:
        args.append("--resume")
    cmd = [sys.executable, "-m", "study.run", *args]
    _log(f"study {name}: {shlex.join(cmd[1:])}")
    return study_run(args), cmd


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage = str(Path(args.storage).expanduser().resolve())
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(storage) / 'mlflow.db'}"
    teacher_path = Path(storage) / "fidelity" / (TEACHER.replace(".pt", "_tiny.pt") if args.tiny else TEACHER)
    record = Path(storage) / "fidelity" / ("run_tiny.json" if args.tiny else "run.json")  # for --report-only
    times, commands, figures = {}, [], {}
    start = time.time()
    if args.report_only and record.exists():
        saved = json.loads(record.read_text())
        times, commands, figures = saved["times"], saved["commands"], saved["teacher"]
    if not args.report_only:
        t = time.time()
        figures = teacher(teacher_path, args.tiny)
        times["teacher"] = time.time() - t
        commands.append(
            shlex.join(["python", "-m", "trainables.pretrain", str(teacher_path)]).replace(os.getcwd() + os.sep, "")
        )
        from study.cluster import init_ray

        init_ray(args.address, verbose=False, dashboard=True)  # one Ray for the three studies: seconds each saved
        for name in STUDIES:
            t = time.time()
            # --resume continues the studies that were started; one not reached yet starts afresh
            resume = args.resume and (Path(storage) / name).exists()
            code, cmd = run_spec(name, storage, args.tracking_uri, teacher_path, resume, args.tiny, args.address)
            times[f"study {name}"] = time.time() - t
            commands.append("python " + shlex.join(cmd[1:]).replace(os.getcwd() + os.sep, ""))
            if code != 0:
                _log(
                    f"study {name} ended with exit status {code}; fix what it printed, then rerun with --resume "
                    "(or --report-only for what finished)"
                )
                return 1 if code != 2 else 2
        times["total"] = time.time() - start
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"times": times, "commands": commands, "teacher": figures}, indent=1))

    from mlflow.tracking import MlflowClient

    from dashboards.publish import fidelity_report, log_fidelity_report, missing_store

    if missing_store(uri):  # --report-only on a store that was never written: say so, create nothing
        print(
            f"error: no MLflow store at {uri}; run python -m study.fidelity without --report-only first, "
            "or pass the --storage / --tracking-uri the studies used",
            file=sys.stderr,
        )
        return 2

    out = args.out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    context = {
        "figure": out.with_suffix(".png"),
        "teacher": figures,
        "times": times,
        "commands": commands or ["(--report-only: the studies ran earlier, without a record of how)"],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_gpu() or 'no GPU'}",
        "scale": "tiny" if args.tiny else "full",
        "command": "python -m study.fidelity" + (" --tiny" if args.tiny else ""),
    }
    client = MlflowClient(uri)
    try:
        report = fidelity_report(client, context)
    except LookupError as e:  # StudyNotFound: a study that never ran
        print(f"error: {e}; run python -m study.fidelity without --report-only first", file=sys.stderr)
        return 2
    out.write_text(report.markdown)
    claims_csv = out.with_name(out.stem + "_claims.csv")
    report.claims.to_csv(claims_csv, index=False)
    run_id = log_fidelity_report(client, [out, context["figure"], claims_csv], report, context)
    counts = report.claims["verdict"].value_counts()
    _log(
        f"wrote {out} ({', '.join(f'{counts.get(v, 0)} {v}' for v in ('held', 'not held', 'unclear'))} of "
        f"{len(report.claims)} claims) and {context['figure'].name}; MLflow run {run_id} in experiment "
        f"fidelity-report at {uri}" + (f"; {times['total'] / 60:.1f} min in all" if "total" in times else "")
    )
    for _, r in report.claims.iterrows():
        print(f"  {r['verdict']:>8}  {r['source']}: {r['claim']}")
    return 0


def _gpu() -> str:
    """The first CUDA device's name, or '' (the trials ran where Ray put them; this is the driver's machine)."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    except ImportError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
