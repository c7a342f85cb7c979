"""The first visit: the link `python -m dashboards.ui` prints opens MLflow 3.17 where the answer is.

A real store, written the way the driver writes it (open_study_run tags the experiment with the
study's saved view; four trial runs with per-landmark series, costs and objectives; the comparison
refreshed, which writes each trial's description). A real UI on a free loopback port; headless
Chromium opens the printed link and, separately, a trial's run page. Checked in the rendered DOM:
the model-training Runs tab shows the four trial runs as rows of their own (not folded under the
study run), in the study's view, with the objective and cost columns; the run page shows the
trial's objectives and costs before its metrics table. Screenshots go to $PLOTS_SHOTS_DIR
(default /tmp/plots-shots). The UI takes 40-100 s to answer on a loaded 2-core machine; every wait
is a bounded poll, and the UI is stopped with SIGTERM (it stops its whole process group).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from helpers import clean_env, free_port

from dashboards.publish import StudyInfo, publish_study
from dashboards.ui import processes
from study.schema import TAG_PARENT, TAG_ROLE, TAG_STATUS, TAG_STUDY, TAG_TRIAL
from study.spec import load_spec
from study.study_run import open_study_run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300  # /health answered after 46-106 s here (the server starts about 14 processes)
PAGE_BUDGET_MS = 30_000  # Chromium's virtual time for the single-page app to fetch and draw the runs
RUNS_WINDOW = "1600,1000"
RUN_WINDOW = "1920,1080"  # the run page's two-column layout (description first) beside MLflow's assistant panel

SPEC = """\
    study:
      name: firstvisit
      objectives: [{metric: val/mre_mm, mode: min}, {metric: val/sdr_2mm, mode: max}]
      storage: STORE
    space:
      optim.lr: {loguniform: [0.0001, 0.01]}
      target.schedule: {choice: [fixed, adaloss]}
    """
# trial: (status, lr, schedule, val/mre_mm, val/sdr_2mm, cost/gflops)
TRIALS = {
    "a1": ("finished", 3e-4, "adaloss", 1.6, 71.0, 4.2),
    "b2": ("finished", 1e-3, "fixed", 2.1, 64.0, 2.1),
    "c3": ("stopped early", 5e-3, "fixed", 2.9, 55.0, 2.1),
    "d4": ("finished", 2e-4, "adaloss", 1.9, 60.0, 8.4),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("firstvisit")
    (tmp / "fv.yaml").write_text(textwrap.dedent(SPEC).replace("STORE", str(tmp / "store")))
    spec = load_spec(tmp / "fv.yaml")
    spec.storage_path.mkdir(parents=True)
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    study_run = open_study_run(uri, spec)  # the driver's own call: it tags the experiment
    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    runs = {}
    for tid, (status, lr, schedule, mre, sdr, gflops) in TRIALS.items():
        run = client.create_run(
            study_run.experiment_id,
            run_name=f"firstvisit-{tid}",
            tags={
                TAG_STUDY: "firstvisit",
                TAG_ROLE: "trial",
                TAG_TRIAL: tid,
                TAG_PARENT: study_run.run_id,
                TAG_STATUS: status,
            },
        )
        # like a real trial: the objectives buried among ~60 metrics, per-landmark series first alphabetically
        metrics = {
            "val/mre_mm": mre,
            "val/sdr_2mm": sdr,
            "cost/gflops": gflops,
            "cost/epoch_s": 10 * gflops,
            "cost/params_m": gflops / 2,
            "cost/latency_ms": 3 * gflops,
            "train/loss": 0.1,
            **{f"target/sigma_{k}": 2.0 for k in range(19)},
            **{f"train/loss_lm_{k}": 0.01 for k in range(19)},
        }
        client.log_batch(
            run.info.run_id,
            params=[Param("optim.lr", str(lr)), Param("target.schedule", schedule), Param("train.epochs", "10")],
            metrics=[Metric(k, v, now, 10) for k, v in metrics.items()],
        )
        runs[tid] = run.info.run_id
    info = StudyInfo(
        "firstvisit",
        study_run.experiment_id,
        study_run.run_id,
        [("val/mre_mm", "min"), ("val/sdr_2mm", "max")],
        dict(spec.space),
    )
    publish_study(client, info)  # what the driver does after each trial: ranks, tags, descriptions
    return {"uri": uri, "experiment_id": study_run.experiment_id, "runs": runs, "tmp": tmp}


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _poll(what: str, timeout_s: float, check):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout_s} s")


def _browse(exe: str, url: str, name: str, tmp_path: Path, window: str) -> str:
    """The page's DOM after PAGE_BUDGET_MS of virtual time, in a fresh profile (a first visit:
    nothing stored in the browser); its screenshot kept as `name`.png."""
    shot = tmp_path / f"{name}.png"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / f'profile-{name}'}",
        f"--window-size={window}",
        f"--virtual-time-budget={PAGE_BUDGET_MS}",
        f"--screenshot={shot}",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert shot.exists() and "<html" in done.stdout, f"chromium (rc {done.returncode}):\n{done.stderr[-2000:]}"
    shots = os.environ.get("PLOTS_SHOTS_DIR", "/tmp/plots-shots")
    os.makedirs(shots, exist_ok=True)
    shutil.copy(shot, os.path.join(shots, shot.name))
    return done.stdout


def _stop(ui: subprocess.Popen) -> None:
    """SIGTERM to dashboards.ui, which stops the server's whole group; by pid whatever is left."""
    if ui.poll() is not None:
        return
    below = {pid for pid, (_, ppid, _) in (processes() or {}).items() if ppid == ui.pid}
    ui.send_signal(signal.SIGTERM)
    try:
        ui.wait(timeout=60)
    except subprocess.TimeoutExpired:
        for pid in below:  # the server leads its own group: only what this test started
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        ui.kill()
        ui.wait()


def test_the_printed_link_opens_the_trials_with_their_objectives_and_costs(store, chromium, tmp_path):
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen(
            [sys.executable, "-m", "dashboards.ui", "--tracking-uri", store["uri"], "--port", str(port)],
            cwd=tmp_path,
            env={**clean_env(), "PYTHONPATH": str(REPO)},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:

        def printed():
            assert ui.poll() is None, log.read_text()[-3000:]
            found = re.search(r"study firstvisit: (http://\S+)", log.read_text())
            return found and found.group(1)

        url = _poll("the study's link in dashboards.ui's output", 120, printed)
        assert url == (
            f"http://127.0.0.1:{port}/#/experiments/{store['experiment_id']}/runs"
            "?workflowType=machine_learning&viewStateShareKey=study-firstvisit"
        )

        def healthy():
            assert ui.poll() is None, log.read_text()[-3000:]
            return _answers(port)

        _poll(f"http://127.0.0.1:{port}/health", START_TIMEOUT_S, healthy)

        dom = _browse(chromium, url, "first_visit_runs", tmp_path, RUNS_WINDOW)
        assert "study firstvisit: trials" in dom  # the saved view is the one open
        assert re.search(r"<strong>4</strong>\s*matching runs", dom), "not the four trial runs"
        for tid in TRIALS:  # every trial is a row: none folded under the study run
            assert f">firstvisit-{tid}<" in dom, tid
        for header in ("trial.status", "pareto.rank", "val/mre_mm", "val/sdr_2mm", "cost/gflops", "cost/epoch_s"):
            assert f">{header}<" in dom, header
        assert (
            dom.index(">firstvisit-a1<")
            < dom.index(">firstvisit-d4<")
            < dom.index(">firstvisit-b2<")
            < dom.index(">firstvisit-c3<")
        )  # best val/mre_mm first: 1.6, 1.9, 2.1, 2.9
        assert "Detect Issues" not in dom  # not the GenAI overview

        run_url = url.split("/#/")[0] + (
            f"/#/experiments/{store['experiment_id']}/runs/{store['runs']['a1']}?workflowType=machine_learning"
        )
        page = _browse(chromium, run_url, "first_visit_trial_run", tmp_path, RUN_WINDOW)
        lead = page.index("val/mre_mm 1.6")  # the description, rendered from markdown
        assert "val/sdr_2mm 71" in page and "cost/gflops 4.2" in page and "adaloss, lr 3e-4" in page
        assert lead < page.index("Metrics (")  # before the table of every metric
    finally:
        _stop(ui)
    assert ui.returncode == 0, log.read_text()[-3000:]
    assert "stopping the MLflow UI" in log.read_text()
