"""The `landmark-study` console command and the `from study import load_spec, run_study` API.

The command runs as pip's generated script does (`sys.exit(main())` after importing the entry point
pyproject names), in subprocesses started together. `validate` must print exactly what
`python -m study.run SPEC --dry-run` prints: one implementation behind both.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
HEAVY = ("torch", "ray", "mlflow")  # none of them may load for --help or `import study`


def _entry_point() -> tuple[str, str]:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert list(scripts) == ["landmark-study"]
    module, func = scripts["landmark-study"].split(":")
    return module, func


def _console(*args: str) -> list[str]:
    module, func = _entry_point()
    script = f"import sys; from {module} import {func}; sys.exit({func}())"  # what pip writes into bin/
    return [sys.executable, "-X", "importtime", "-c", script, *args]


CASES = {
    "help": _console("--help"),
    "no_command": _console(),
    "unknown": _console("train", "x.yaml"),
    "validate": _console("validate", str(QUICKSTART)),
    "dry_run": [sys.executable, "-X", "importtime", "-m", "study.run", str(QUICKSTART), "--dry-run"],
    "run_help": _console("run", "--help"),
    "validate_bad": _console("validate", str(QUICKSTART), "--set", "study.trials=zero"),
    "api": [
        sys.executable,
        "-X",
        "importtime",
        "-c",
        """
import sys
import study
print("after import:", sorted(m for m in ("torch", "ray", "mlflow") if m in sys.modules))
spec = study.load_spec(sys.argv[1], ["study.trials=2"])
print(type(spec).__module__, type(spec).__name__, spec.study.name, spec.study.trials, spec.primary.metric)
print("after load_spec:", "ray" in sys.modules)
try:
    study.load_spec(sys.argv[1], ["study.sampler=annealing"])
except study.SpecError as e:
    print("SpecError:", e.problems)
""",
        str(QUICKSTART),
    ],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[int, str, str, set[str]]]:
    """name -> (exit status, stdout, stderr without the importtime lines, imported modules)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    shared = tmp_path_factory.mktemp("validate_and_dry_run")  # one cwd: the storage they print is the same
    started = {
        name: subprocess.Popen(
            cmd,
            cwd=shared if name in ("validate", "dry_run") else tmp_path_factory.mktemp(name),
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, cmd in CASES.items()
    }
    out = {}
    try:
        for name, proc in started.items():
            stdout, stderr = proc.communicate(timeout=300)  # 8 torch imports at once on 2 shared cores
            lines = stderr.splitlines()
            imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
            rest = "\n".join(line for line in lines if not line.startswith("import time:"))
            out[name] = (proc.returncode, stdout, rest, imported)
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def test_help_lists_every_subcommand_and_imports_nothing_heavy(runs):
    rc, out, err, imported = runs["help"]
    assert rc == 0 and err == ""
    assert out.startswith("usage: landmark-study COMMAND [ARGS ...]")
    block = out.split("commands:\n")[1].split("\n\n")[0].splitlines()
    listed = [line.split()[0] for line in block if not line.startswith("   ")]
    assert listed == ["run", "validate", "pareto", "ui"]
    assert "      = python -m study.run SPEC --dry-run [--set path=value ...]" in block
    assert "      = python -m dashboards.ui [--tracking-uri URI] [--port N]" in block
    assert not {m for m in imported if m.split(".")[0] in HEAVY}


def test_no_command_prints_the_usage_and_exits_2(runs):
    rc, out, err, _ = runs["no_command"]
    assert rc == 2 and out == "" and err.startswith("usage: landmark-study COMMAND")


def test_an_unknown_command_names_the_valid_ones(runs):
    rc, out, err, _ = runs["unknown"]
    assert rc == 2 and out == ""
    assert err.strip() == (
        "error: unknown command 'train'; choose one of run, validate, pareto, ui "
        "(`landmark-study --help` says what each does)"
    )


def test_validate_is_the_dry_run(runs):
    rc, out, err, imported = runs["validate"]
    assert rc == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"study 'quickstart' from {QUICKSTART}"
    assert "  space (in sampling order):" in lines
    assert lines[-1] == "dry run: the spec is valid; nothing was started"
    assert out == runs["dry_run"][1]  # word for word what python -m study.run --dry-run prints
    assert not {m for m in imported if m == "ray" or m.startswith("ray.")}


def test_a_subcommand_help_is_its_module_help_under_the_console_name(runs):
    rc, out, _, _ = runs["run_help"]
    assert rc == 0
    assert out.startswith("usage: landmark-study run [-h] [--dry-run] [--resume] [--force]")
    assert "--tracking-uri" in out


def test_validate_reports_spec_problems_like_the_module(runs):
    rc, out, err, _ = runs["validate_bad"]
    assert rc == 2 and out == ""
    assert err.splitlines()[0] == "error: 1 problem(s) in the spec; nothing was started:"
    assert "study.trials" in err.splitlines()[1]


def test_python_api_load_spec(runs):
    rc, out, err, imported = runs["api"]
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "after import: []"  # `import study` alone loads none of torch, Ray, MLflow
    assert lines[1] == "study.spec.model Spec quickstart 2 val/mre_mm"
    assert lines[2] == "after load_spec: False"  # Ray waits for run_study
    assert re.fullmatch(r"SpecError: \[.*study\.sampler.*'annealing'.*\]", lines[3])
    assert "study" in imported and not {m for m in imported if m == "ray" or m.startswith("ray.")}


def test_the_docs_document_the_api_and_what_it_returns():
    """Every field of Spec and StudyResult is named on the docs' Python API page (StudyResult
    read from the source: importing study.tuner would start Ray's imports)."""
    from study.spec import Spec

    section = (REPO / "docs" / "python-api.md").read_text()
    assert "from study import load_spec, run_study" in section
    tree = ast.parse((REPO / "study" / "tuner.py").read_text())
    result = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StudyResult")
    result_fields = [n.target.id for n in result.body if isinstance(n, ast.AnnAssign)]
    assert result_fields[:2] == ["table", "tracking_uri"]  # found the dataclass, not something else
    for name in [*result_fields, *(f.name for f in dataclasses.fields(Spec))]:
        assert f"`{name}`" in section, f"docs/python-api.md: {name} not documented"
