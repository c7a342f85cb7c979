"""Every command the platform prints for the user pastes into a POSIX shell as it is (issue 28):
paths and URIs with a space are quoted, so `shlex.split` of the printed line is the argv meant.

The end of `python -m study.run` is exercised in-process with the study itself stubbed out
(study.tuner and study.tracking replaced in sys.modules): nothing here imports or starts Ray.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
import types
from pathlib import Path

import pandas as pd

import study.run
from dashboards.ui import python_command, ui_command

SPACED_URI = "sqlite:////tmp/x/p4 with space/m.db"  # the case: a storage path with a space


def test_ui_command_with_a_space_in_the_store_splits_back_into_its_argv(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/opt/my env/bin/python")  # outside the cwd: shown absolute
    assert python_command() == "'/opt/my env/bin/python'"
    assert shlex.split(ui_command(SPACED_URI)) == [
        "/opt/my env/bin/python",
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        SPACED_URI,
        "--host",
        "127.0.0.1",
        "--port",
        "5000",
    ]
    assert ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000 in a browser"  # not a command


def _after(lines: list[str], label: str) -> str:
    """The text after `label` on the one line that holds it."""
    (line,) = [line for line in lines if label in line]
    return line.split(label, 1)[1].strip()


def test_study_run_prints_commands_that_split_back_into_their_argv(tmp_path, monkeypatch, capsys):
    storage = tmp_path / "p4 with space"
    uri = f"sqlite:///{storage}/mlflow.db"
    spec = tmp_path / "my spec.yaml"
    spec.write_text(
        textwrap.dedent("""\
        study: {name: p4, storage: store, trials: 1}
        base:
          train: {epochs: 1}
        """)
    )
    result = types.SimpleNamespace(
        table=pd.DataFrame({"trial": ["p4_00000"]}),
        front="",
        num_errors=0,
        study_dir=storage / "p4",
        tracking_uri=uri,
        experiment_id="7",
        undelivered=2,
        interrupted=True,
        stopped_by="",
    )
    monkeypatch.setitem(sys.modules, "study.tuner", types.SimpleNamespace(run_study=lambda spec, **kw: result))
    monkeypatch.setitem(sys.modules, "study.tracking", types.SimpleNamespace(experiment_name=lambda spec: "p4"))
    monkeypatch.setattr(study.run, "preflight", lambda spec, uri, address: [])
    argv = [str(spec), "--storage", str(storage), "--set", "study.seed=3", "--tracking-uri", uri]

    assert study.run.main(argv) == study.run.EXIT_INTERRUPTED
    out = capsys.readouterr()
    lines = out.out.splitlines()
    python = shlex.split(python_command())  # this interpreter, however it is shown: one word
    assert len(python) == 1 and Path(python[0]).resolve() == Path(sys.executable).resolve()
    assert shlex.split(_after(lines, "open the UI:")) == [
        *python,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        "5000",
    ]
    assert shlex.split(_after(lines, "or:")) == [*python, "-m", "dashboards.ui", "--tracking-uri", uri]
    assert shlex.split(_after(lines, "the front:")) == [*python, "-m", "dashboards.pareto", "p4", "--tracking-uri", uri]

    # Both resume hints (MLflow's queue, and Ctrl-C) give this run's own arguments back, with --resume.
    err = out.err.splitlines()
    resume = [*python, "-m", "study.run", *argv, "--resume"]
    hints = [err[i + 1] for i, line in enumerate(err) if line.endswith(("deliver them with", "continue with"))]
    assert len(hints) == 2 and [shlex.split(h) for h in hints] == [resume, resume]


def test_resume_command_hides_a_password_and_keeps_the_rest():
    cmd = study.run.resume_command(
        "python -m study.run",
        ["s.yaml", "--tracking-uri", "http://alice:hunter2@127.0.0.1:5000", "--storage=/tmp/a b", "--resume"],
    )
    assert "hunter2" not in cmd
    assert shlex.split(cmd) == [
        "python",
        "-m",
        "study.run",
        "s.yaml",
        "--tracking-uri",
        "http://alice:***@127.0.0.1:5000",
        "--storage=/tmp/a b",
        "--resume",
    ]
    cmd = study.run.resume_command("landmark-study run", ["s.yaml", "--tracking-uri=https://bob:pw@mlflow.example/x"])
    assert shlex.split(cmd) == [
        "landmark-study",
        "run",
        "s.yaml",
        "--tracking-uri=https://bob:***@mlflow.example/x",
        "--resume",
    ]
