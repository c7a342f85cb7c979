"""Every bad input stopped at the door: `python -m study.run` exits 2 with one line per problem
naming the culprit, before Ray is imported, and writes nothing.

Each case runs the real CLI (`study.run.main`) in its own empty folder (the cwd), so that a
storage folder, an MLflow store or phantom data it wrote would show up there. All cases run in one
fresh interpreter, which must not have imported Ray by the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_data_checks import (
    FACE_FILES,
    face_lines,
    isbi_ann,
    isbi_image,
    isbi_lines,
    make_300w,
    make_hand,
    make_isbi,
    truncate,
    write_isbi_annotation,
    write_pts,
)

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"

OK = """\
    study: {name: ok, storage: store, trials: 1}
    base:
      train: {epochs: 1}
    """


@dataclass
class Case:
    spec: str | bytes | None  # spec.yaml's content (None: no file written)
    args: list[str]  # after `python -m study.run`
    words: list[str]  # each must appear in stderr
    problems: int = 1  # lines of problems expected
    files: Callable[[Path], None] | None = None  # writes data files into the case's folder first


def _isbi_truncated(folder: Path) -> None:
    truncate(isbi_image(make_isbi(folder / "isbi")))


def _isbi_off_image(folder: Path) -> None:
    root = make_isbi(folder / "isbi")
    lines = isbi_lines()
    lines[2] = "5000,5000"
    write_isbi_annotation(isbi_ann(root), lines)


def _hand_bad_cell(folder: Path) -> None:
    root = make_hand(folder / "hand")
    csv = root / "all.csv"
    rows = csv.read_text().splitlines()
    cells = rows[1].split(",")
    cells[5] = "12O"
    rows[1] = ",".join(cells)
    csv.write_text("\n".join(rows) + "\n")


def _face_bad_point(folder: Path) -> None:
    root = make_300w(folder / "300w")
    folder_name, image = next(iter(FACE_FILES.items()))
    lines = face_lines()
    lines[7] = "12.O 4"
    write_pts((root / folder_name / image).with_suffix(".pts"), lines)


CASES: dict[str, Case] = {
    # --- the spec file itself
    "no_file": Case(None, ["missing.yaml"], ["missing.yaml: no such spec file"]),
    "a_folder": Case(None, ["."], [".: no such spec file (it is a folder)"]),
    "not_utf8": Case(b"study:\n  name: caf\xe9\n", ["spec.yaml"], ["spec.yaml: line 2: not UTF-8 text (byte 0xe9)"]),
    "binary": Case(b"\x00\x01\x02study", ["spec.yaml"], ["spec.yaml: not a text file (it holds NUL bytes)"]),
    "invalid_yaml": Case(
        "study:\n  name: x\n trials: 3\n", ["spec.yaml"], ["spec.yaml: line 3, column 2: invalid YAML"]
    ),
    "not_a_mapping": Case("- 1\n- 2\n", ["spec.yaml"], ["expected a mapping with sections"]),
    "duplicate_key": Case(
        "study:\n  name: d\n  trials: 2\n  trials: 3\n",
        ["spec.yaml"],
        ["spec.yaml: line 4: duplicate key 'trials' (first at line 3)"],
    ),
    "duplicate_section": Case(
        "study: {name: a}\nbase: {}\nstudy: {name: b}\n",
        ["spec.yaml"],
        ["spec.yaml: line 3: duplicate key 'study' (first at line 1)"],
    ),
    "duplicate_nested": Case(
        "study: {name: a}\nbase:\n  optim: {lr: 0.1, lr: 0.2}\n", ["spec.yaml"], ["line 3: duplicate key 'lr'"]
    ),
    "unknown_section": Case(
        "study: {name: a}\nspaces: {}\n", ["spec.yaml"], ["spaces: unknown section (did you mean 'space'?)"]
    ),
    "yaml_tag": Case("study: {name: !!python/object/apply:os.system [ls]}\n", ["spec.yaml"], ["invalid YAML"]),
    # --- numbers that can only be typos
    "huge_trials": Case(
        "study: {name: a, trials: 99999999999999999999999}\n",
        ["spec.yaml"],
        ["study.trials: 99999999999999999999999 is more than 100,000, which can only be a typo"],
    ),
    "huge_concurrency": Case(
        "study: {name: a, concurrency: 50000}\n", ["spec.yaml"], ["study.concurrency: 50000 is more than 10,000"]
    ),
    "huge_epochs": Case(
        "study: {name: a}\nbase:\n  train: {epochs: 10000000}\n",
        ["spec.yaml"],
        ["base.train.epochs: 10000000 is more than 100,000"],
    ),
    "huge_workers": Case(
        "study: {name: a}\nresources: {workers: 5000}\n", ["spec.yaml"], ["resources.workers: 5000 is more than 1,024"]
    ),
    "zero_trials": Case("study: {name: a, trials: 0}\n", ["spec.yaml"], ["study.trials: must be at least 1"]),
    # --- names
    "long_name": Case(
        f"study: {{name: {'n' * 300}}}\n", ["spec.yaml"], ["study.name:", "(300 characters) must be 1 to 100"]
    ),
    "quote_in_name": Case(
        "study: {name: \"a' or tags.x = 'b\"}\n", ["spec.yaml"], ["study.name: ", "must be 1 to 100 letters"]
    ),
    "slash_in_name": Case("study: {name: a/b}\n", ["spec.yaml"], ["study.name: 'a/b' must be"]),
    "dot_name": Case("study: {name: ..}\n", ["spec.yaml"], ["study.name: '..' must be"]),
    "empty_name": Case("study: {name: ''}\n", ["spec.yaml"], ["study.name: '' must be"]),
    "space_in_name": Case("study: {name: my study}\n", ["spec.yaml"], ["study.name: 'my study' must be"]),
    "experiment_traversal": Case(
        OK,
        ["spec.yaml", "--set", "study.experiment=../../../../tmp/x"],
        ["study.experiment: '../../../../tmp/x' must be"],
    ),
    # --- --set
    "set_without_equals": Case(
        OK, ["spec.yaml", "--set", "study.trials"], ["--set 'study.trials': expected path=value"]
    ),
    "set_yaml_tag": Case(
        OK,
        ["spec.yaml", "--set", "study.seed=!!python/object:os.system"],
        ["--set study.seed: '!!python/object:os.system' is not a plain YAML value"],
    ),
    "set_unknown_path": Case(
        OK, ["spec.yaml", "--set", "base.optim.lrr=0.1"], ["base.optim.lrr: unknown key (did you mean 'lr'?)"]
    ),
    "set_wrong_type": Case(OK, ["spec.yaml", "--set", "study.trials=many"], ["study.trials: expected int"]),
    "trials_flag_huge": Case(OK, ["spec.yaml", "--trials", "1000000"], ["study.trials: 1000000 is more than 100,000"]),
    # --- the spec's content
    "unknown_backbone": Case(
        "study: {name: a}\nbase:\n  model: {name: farnet, backbone: resnet5}\n  data: {input_size: [128, 128]}\n",
        ["spec.yaml"],
        ["base.model.backbone: unknown 'resnet5'"],
    ),
    "bad_range": Case(
        "study: {name: a}\nspace:\n  optim.lr: {loguniform: [0.1, 0.001]}\n",
        ["spec.yaml"],
        ["space.optim.lr.loguniform: low 0.1 > high 0.001; swap them"],
    ),
    "missing_weights": Case(
        "study: {name: a}\nbase:\n  model: {name: farnet, backbone: resnet18, weights: nope.pt}\n  data: {input_size: [128, 128]}\n",
        ["spec.yaml"],
        ["base.model.weights: /", "/nope.pt does not exist"],
    ),  # made absolute: trials run elsewhere
    "isbi_root_missing": Case(
        "study: {name: a}\nbase:\n  data: {dataset: isbi2015, root: no_isbi}\n",
        ["spec.yaml"],
        ["base.data.root: ", "no_isbi: dataset root does not exist"],
    ),
    # --- data files, checked for real before any trial (the same check as python -m trainables.data.*)
    "isbi_truncated_image": Case(
        "study: {name: a}\nbase:\n  data: {dataset: isbi2015, root: isbi}\n",
        ["spec.yaml"],
        ["base.data.root: ", "002.bmp: truncated"],
        files=_isbi_truncated,
    ),
    "isbi_landmark_off_image": Case(
        "study: {name: a}\nbase:\n  data: {dataset: isbi2015, root: isbi}\n",
        ["spec.yaml"],
        ["002.txt:3: landmark 3 at (5000, 5000) is outside the 30×24"],
        files=_isbi_off_image,
    ),
    "hand_bad_cell": Case(
        "study: {name: a}\nbase:\n  data: {dataset: hand, root: hand, num_landmarks: 37,"
        " train_split: set1, val_split: set2}\n  eval: {split: ''}\n",
        ["spec.yaml"],
        ['all.csv:2: column 6: expected a number or nan, got "12O"'],
        files=_hand_bad_cell,
    ),
    "face_bad_point": Case(
        "study: {name: a, objectives: [{metric: val/nme, mode: min}]}\nbase:\n"
        "  data: {dataset: 300w, root: 300w, num_landmarks: 68, val_split: common}\n"
        "  eval: {split: ''}\n",
        ["spec.yaml"],
        ['expected "x y" numbers, got "12.O 4"'],
        files=_face_bad_point,
    ),
    "force_without_resume": Case(OK, ["spec.yaml", "--force"], ["error: --force only goes with --resume"], problems=0),
    # --- storage, tracking and cluster: checked after the spec, still before Ray
    "storage_is_a_file": Case(
        OK, ["spec.yaml", "--storage", "afile/sub"], ["study.storage afile/sub:", "is a file, not a folder"]
    ),
    "storage_read_only": Case(OK, ["spec.yaml", "--storage", "/proc/landmark"], ["study.storage /proc/landmark:"]),
    "storage_with_credentials": Case(
        OK,
        ["spec.yaml", "--storage", "s3://AKIAKEY:s3cret@bucket/x"],
        ["study.storage s3://AKIAKEY:***@bucket/x: credentials in the storage URI"],
    ),
    "s3_unreachable": Case(
        OK,
        ["spec.yaml", "--storage", "s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http"],
        ["study.storage s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http: not reachable"],
    ),
    "tracking_unknown_scheme": Case(
        OK, ["spec.yaml", "--tracking-uri", "foo://x"], ["--tracking-uri foo://x: unsupported scheme 'foo'"]
    ),
    "tracking_file_store": Case(
        OK, ["spec.yaml", "--tracking-uri", "file:///tmp/mlruns"], ["file store is deprecated"]
    ),
    "tracking_no_driver": Case(
        OK,
        ["spec.yaml", "--tracking-uri", "mysql://u@127.0.0.1/db"],
        ["the database driver 'MySQLdb' is not installed; pip install 'mysqlclient'"],
    ),
    "tracking_down": Case(OK, ["spec.yaml", "--tracking-uri", "http://127.0.0.1:9"], ["does not answer"]),
    "tracking_secret": Case(
        OK,
        ["spec.yaml", "--tracking-uri", "http://alice:hunter2@127.0.0.1:9"],
        ["--tracking-uri: MLflow tracking server http://127.0.0.1:9 does not answer"],
    ),
    "address_nothing_there": Case(
        OK, ["spec.yaml", "--address", "127.0.0.1:9"], ["--address 127.0.0.1:9: no Ray cluster answers there"]
    ),
    "address_malformed": Case(
        OK, ["spec.yaml", "--address", "nohostport"], ["--address nohostport: expected HOST:PORT"]
    ),
}


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    folder: Path
    before: set[str]
    seconds: float


# Runs every case in one interpreter (torch is imported once, not 45 times): each case in its own
# folder as the cwd, its stdout and stderr captured; at the end, whether Ray was ever imported.
RUNNER = """
import contextlib, io, json, os, sys, time
from study.run import main
out = {}
for name, folder, args in json.load(sys.stdin):
    os.chdir(folder)
    stdout, stderr = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            rc = main(args)
        except SystemExit as e:
            rc = e.code
    out[name] = [rc, stdout.getvalue(), stderr.getvalue(), time.monotonic() - t0]
print(json.dumps({"runs": out, "ray": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))}))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict[str, Run], list[str]]:
    todo, before = [], {}
    for name, case in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        if isinstance(case.spec, bytes):
            (folder / "spec.yaml").write_bytes(case.spec)
        elif case.spec is not None:
            (folder / "spec.yaml").write_text(textwrap.dedent(case.spec))
        (folder / "afile").write_text("a file where a folder is expected\n")
        if case.files:
            case.files(folder)
        before[name] = (folder, {p.name for p in folder.iterdir()})
        todo.append([name, str(folder), case.args])
    home = tmp_path_factory.mktemp("home")
    env = {
        **os.environ,
        "LANDMARK_STUDY_DATA": str(home / "data_home"),
        "TORCH_HOME": str(home / "empty_hub"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": str(ROOT),
    }
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(todo),
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    runs = {
        name: Run(rc, out, err, before[name][0], before[name][1], seconds)
        for name, (rc, out, err, seconds) in result["runs"].items()
    }
    return runs, result["ray"]


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_stopped_at_the_door(runs, name):
    case, run = CASES[name], runs[0][name]
    assert run.rc == 2, f"exit {run.rc}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    for words in case.words:
        assert words in run.stderr, f"{words!r} not in:\n{run.stderr}"
    if case.problems:
        lines = run.stderr.splitlines()
        assert re.fullmatch(r"error: \d+ problem\(s\).*; nothing was started:", lines[0]), lines[0]
        assert len(lines) == 1 + case.problems, run.stderr  # one line per problem, no traceback
    assert "Traceback" not in run.stderr
    assert {p.name for p in run.folder.iterdir()} == run.before, "something was written"
    for secret in ("hunter2", "s3cret"):
        assert secret not in run.stdout + run.stderr


def test_no_case_imported_ray(runs):
    assert runs[1] == [], "a bad input got as far as importing Ray"


def test_an_address_with_nothing_there_fails_fast(runs):
    assert runs[0]["address_nothing_there"].seconds < 15
