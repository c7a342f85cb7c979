"""A trial's pictures and best checkpoint, from its Train run's checkpoints, to its MLflow run.

The study driver calls this when a trial ends (finished, stopped early, diverged or failed):

    publish_trial(client, run_id, "studies/quickstart/train/train_1a2b3c4d",
                  primary=("val/mre_mm", "min"), adaloss=True)

It picks the trial's best epoch by the primary objective among the checkpoints Train kept (the
two best and the latest), and logs to the run:
    checkpoint/checkpoint.pt, checkpoint/metrics.json   the best epoch's weights and metrics
    plots/ced.png                                       cumulative error distribution, best epoch
    plots/overlays.png, plots/heatmaps.png              a few validation images (eval.preview)
    plots/sigma.png                                     σ per landmark over epochs (Adaloss), named
                                                        where the dataset names its landmarks (ISBI 2015)
    tables/test_<split>_per_landmark.txt                the final test, per landmark
Each checkpoint's preview.npz (trainables.objective.Scorer.preview) holds what the pictures need,
so nothing here runs a model. The Train storage may be a local folder or a URI (s3://, gs://).
"""

from __future__ import annotations

import io
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs

from dashboards import trial_plots
from dashboards.plots import FACE68_REGIONS
from trainables.checkpoint import CHECKPOINT_FILE, METRICS_FILE, PREVIEW_FILE, TrainRun
from trainables.data import landmark_names


def best(found: list[tuple[str, dict]], metric: str, mode: str) -> tuple[str, dict] | None:
    """The checkpoint with the best finite `metric` (the later epoch on a tie), or None."""
    scored = [c for c in found if isinstance(c[1].get(metric), (int, float)) and math.isfinite(c[1][metric])]
    if not scored:
        return None
    sign = 1 if mode == "min" else -1
    return min(scored, key=lambda c: (sign * c[1][metric], -c[1].get("epoch", 0)))


def publish_trial(client, run_id: str, train_dir: str, primary: tuple[str, str], adaloss: bool) -> list[str]:
    """Log the pictures and best checkpoint of one trial; -> the artefact paths logged."""
    metric, mode = primary
    run = TrainRun(train_dir)
    found = run.saved_metrics()  # (path, metrics.json) of each checkpoint whose metrics read, oldest epoch first
    chosen = best(found, metric, mode)
    fs = run.fs
    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for sub in ("checkpoint", "plots", "tables"):
            (out / sub).mkdir()
        if chosen is not None:
            path, metrics = chosen
            epoch = metrics.get("epoch")
            for name in (CHECKPOINT_FILE, METRICS_FILE):
                _copy(fs, f"{path}/{name}", out / "checkpoint" / name)
            preview = _load_preview(fs, f"{path}/{PREVIEW_FILE}")
            if preview is not None:
                label = f"epoch {epoch} (best {metric})"
                unit = str(preview["unit"])
                trial_plots.ced_png(
                    preview["errors"], unit, float(preview["ced_threshold"]), out / "plots" / "ced.png", f"CED, {label}"
                )
                if "images" in preview:
                    n_errors = preview["errors"][: len(preview["images"])]
                    trial_plots.overlays_png(
                        preview["images"],
                        preview["gt"],
                        preview["pred"],
                        out / "plots" / "overlays.png",
                        f"prediction (red) vs ground truth (green), {label}",
                        errors=n_errors,
                        unit=unit,
                    )
                    trial_plots.heatmaps_png(
                        preview["images"],
                        preview["heatmaps"].astype(np.float32),
                        int(preview["stride"]),
                        out / "plots" / "heatmaps.png",
                        f"heatmaps, {label}",
                    )
        if found:  # the final test's tables ride in the last checkpoint
            last, _ = found[-1]
            for info in fs.get_file_info(pyarrow.fs.FileSelector(last)):
                if info.base_name.endswith("_per_landmark.txt"):
                    _copy(fs, info.path, out / "tables" / info.base_name)
        if adaloss:
            sigma = sigma_history(client, run_id)
            if not sigma.empty:
                groups = FACE68_REGIONS if sigma.shape[1] == 68 else None
                dataset = client.get_run(run_id).data.params.get("data.dataset")  # the trial's whole config is logged
                trial_plots.sigma_png(
                    sigma,
                    out / "plots" / "sigma.png",
                    "Adaloss: target σ per landmark",
                    groups=groups,
                    names=landmark_names(dataset, int(max(sigma.columns)) + 1),
                )
        for sub in ("checkpoint", "plots", "tables"):
            files = sorted(p.name for p in (out / sub).iterdir())
            if files:
                client.log_artifacts(run_id, str(out / sub), sub)
                logged += [f"{sub}/{f}" for f in files]
    return logged


def sigma_history(client, run_id: str) -> pd.DataFrame:
    """target/sigma_<k> of a run as a table: index epoch, one column per landmark k."""
    names = [k for k in client.get_run(run_id).data.metrics if k.startswith("target/sigma_")]
    series = {int(k.rsplit("_", 1)[1]): {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in names}
    if not series:
        return pd.DataFrame()
    table = pd.DataFrame(series).sort_index()
    table.index.name = "epoch"
    return table[sorted(table.columns)]


def _copy(fs, src: str, dest: Path) -> None:
    try:
        with fs.open_input_stream(src) as f, open(dest, "wb") as g:
            shutil.copyfileobj(f, g)
    except FileNotFoundError:
        pass


def _load_preview(fs, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except FileNotFoundError:
        return None  # a checkpoint from before previews existed
    with np.load(io.BytesIO(data)) as z:
        return {k: z[k] for k in z.files}
