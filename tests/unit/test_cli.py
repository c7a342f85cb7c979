"""`python -m study.run` on bad input: exit 2, one clear error on stderr, nothing started.

Each case runs the real CLI in a subprocess, in its own empty folder (the cwd), so that any
storage folder, phantom data or Ray state it wrote would show up there. The subprocesses start
together (each one spends its few seconds importing torch) and each test checks one of them.
`-X importtime` makes Python list every module it imports on stderr: Ray must not be among them.
"""

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[2] / "search_spaces" / "quickstart.yaml"

HEADER = "error: 1 problem(s) in the spec; nothing was started:"

# name -> (spec.yaml text or None for no file, CLI arguments)
CASES = {
    "missing_file": (None, ["missing.yaml"]),
    "invalid_yaml": (
        """\
        study:
          name: broken
          storage: store
         trials: 3
        """,
        ["spec.yaml"],
    ),
    "unknown_section": (
        """\
        study: {name: typo, storage: store}
        spaces:
          optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        """,
        ["spec.yaml"],
    ),
    "isbi_root_missing": (
        """\
        study: {name: isbi, storage: store}
        base:
          data: {dataset: isbi2015, root: no_isbi}
        """,
        ["spec.yaml"],
    ),
    "dry_run": (None, [str(QUICKSTART), "--dry-run"]),
    "dry_run_full_size": (None, [str(QUICKSTART.parent / "farnet.yaml"), "--dry-run"]),
    "force_without_resume": (None, [str(QUICKSTART), "--force"]),
}


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str  # without the -X importtime lines
    imported: set[str]
    folder: Path
    written: set[str]  # the names in the folder before the run


def _split_importtime(stderr: str) -> tuple[str, set[str]]:
    lines, modules = [], set()
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            modules.add(line.rsplit("|", 1)[1].strip())  # "import time: self | cumulative | module"
        else:
            lines.append(line)
    return "\n".join(lines), modules


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    started = {}
    try:
        for name, (text, args) in CASES.items():
            folder = tmp_path_factory.mktemp(name)
            if text is not None:
                (folder / "spec.yaml").write_text(textwrap.dedent(text))
            # Where phantom data would be generated: inside the folder, so that it would show up too.
            env = {
                **os.environ,
                "LANDMARK_STUDY_DATA": str(folder / "data_home"),
                "TORCH_HOME": str(folder / "empty_hub"),
            }  # no pretrained weights, as on a fresh machine
            env.pop("RAY_ADDRESS", None)
            proc = subprocess.Popen(
                [sys.executable, "-X", "importtime", "-m", "study.run", *args],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started[name] = (proc, folder, {p.name for p in folder.iterdir()})
        out = {}
        for name, (proc, folder, written) in started.items():
            stdout, stderr = proc.communicate(timeout=120)
            stderr, imported = _split_importtime(stderr)
            out[name] = Run(proc.returncode, stdout, stderr, imported, folder, written)
        return out
    finally:
        for proc, _, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _assert_nothing_started(run: Run):
    assert {p.name for p in run.folder.iterdir()} == run.written  # no studies/, store/, data_home/
    assert not (run.folder / "studies").exists() and not (run.folder / "store").exists()
    assert not any(m == "ray" or m.startswith("ray.") for m in run.imported)
    assert run.imported, "-X importtime listed no modules: the Ray check above checked nothing"
    assert not re.search(r"\bray\b", run.stdout + run.stderr, re.IGNORECASE)  # e.g. "Started a local Ray instance"


def _assert_one_error(run: Run) -> str:
    """Exit 2, nothing on stdout, and stderr holds the header plus exactly one problem; returns it."""
    assert run.rc == 2, run.stderr
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert lines[0] == HEADER and len(lines) == 2, run.stderr
    assert lines[1].startswith("  ")
    return lines[1].strip()


def test_missing_spec_file(runs):
    run = runs["missing_file"]
    assert _assert_one_error(run) == "missing.yaml: no such spec file"
    _assert_nothing_started(run)


def test_invalid_yaml(runs):
    run = runs["invalid_yaml"]
    problem = _assert_one_error(run)
    assert problem.startswith("spec.yaml: line 4, column 2: invalid YAML")
    _assert_nothing_started(run)


def test_unknown_top_level_key(runs):
    run = runs["unknown_section"]
    problem = _assert_one_error(run)
    assert problem.startswith("spec.yaml: spaces: unknown section (did you mean 'space'?)")
    _assert_nothing_started(run)


def test_isbi2015_root_that_does_not_exist(runs):
    run = runs["isbi_root_missing"]
    problem = _assert_one_error(run)
    missing = run.folder.resolve() / "no_isbi"  # relative to the cwd, made absolute in the message
    assert problem == f"spec.yaml: base.data.root: {missing}: dataset root does not exist"
    _assert_nothing_started(run)


def test_dry_run_prints_the_study_and_starts_nothing(runs):
    run = runs["dry_run"]
    assert run.rc == 0, run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0] == f"study 'quickstart' from {QUICKSTART}"
    assert f"  storage: {run.folder.resolve() / 'studies' / 'quickstart'}" in lines  # named, not created
    # the space, one line per searched path
    space = lines[lines.index("  space (in sampling order):") + 1 : lines.index("  base config:")]
    assert [line.split() for line in space] == [
        ["optim.lr", "loguniform", "[0.0005,", "0.005]"],
        ["target.schedule", "choice", "['fixed',", "'adaloss']"],
        ["target.sigma", "uniform", "[2.0,", "6.0]", "when", "target.schedule", "=", "fixed"],
    ]
    # the full base config, by dotted path: the YAML's values and the defaults it left out
    preview = lines.index("  first 3 sampled trials (sampler tpe, seed 1):")
    base = dict(
        line.split(None, 1) if len(line.split()) > 1 else (line.strip(), "")
        for line in lines[lines.index("  base config:") + 1 : preview]
    )
    assert base["optim.lr"] == "0.001" and base["train.batch_size"] == "4" and base["train.epochs"] == "10"
    assert base["data.input_size"] == "[128, 104]" and base["train.device"] == "auto"
    assert base["data.root"] == ""
    # a few sampled trials: sigma exactly where the schedule is fixed
    sampled = [dict(kv.split("=") for kv in line.split()[1:]) for line in lines[preview + 1 : preview + 4]]
    assert len(sampled) == 3 and all(("target.sigma" in t) == (t["target.schedule"] == "fixed") for t in sampled)
    assert lines[-1] == "dry run: the spec is valid; nothing was started"
    _assert_nothing_started(run)


def test_dry_run_of_a_full_size_spec_warns_about_missing_data_and_weights(runs):
    run = runs["dry_run_full_size"]
    assert run.rc == 0, run.stderr
    warnings = run.stderr.splitlines()
    assert warnings and all(w.startswith("warning: ") and w.endswith("(a real run needs it)") for w in warnings)
    assert any("base.data.root: " in w and "dataset root does not exist" in w for w in warnings)
    assert any(
        "base.model.weights: imagenet weights for densenet121 are not in the torch hub cache" in w for w in warnings
    )
    assert "  objectives: min val/mre_mm, max val/sdr_2mm, min cost/gflops" in run.stdout.splitlines()
    assert run.stdout.splitlines()[-1] == "dry run: the spec is valid; nothing was started"
    _assert_nothing_started(run)


def test_force_needs_resume(runs):
    run = runs["force_without_resume"]
    assert run.rc == 2 and run.stderr.strip() == "error: --force only goes with --resume"
    _assert_nothing_started(run)
