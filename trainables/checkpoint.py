"""A trial's checkpoint folder: what `fit` writes each epoch and what the driver and dashboards read.

    <checkpoint>/checkpoint.pt          model, optimizer, σ schedule, RNG, epoch (torch.save)
    <checkpoint>/metrics.json           the epoch's reported metrics
    <checkpoint>/preview.npz            the arrays behind the trial's pictures (Scorer.preview)
    <checkpoint>/<name>_per_landmark.txt  the final test's per-landmark table (last epoch only)

Plain files, no torch needed to read metrics.json or preview.npz (dashboards/ reads them).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"  # the epoch's reported metrics, beside its checkpoint
PREVIEW_FILE = "preview.npz"  # the arrays behind the trial's pictures (Scorer.preview)

Report = Callable[[dict, "Path | None"], None]


def report_with_checkpoint(report: Report, metrics: dict, rank: int, state: dict, tables: dict[str, str],
                            preview: dict | None) -> None:
    """Report with a checkpoint folder holding checkpoint.pt, the metrics (metrics.json: a run
    interrupted between saving and delivering them can report them again on resume), preview.npz
    (Scorer.preview) and, at the end, <name>_per_landmark.txt tables."""
    if rank != 0:
        report(metrics, None)
        return
    folder = Path(tempfile.mkdtemp(prefix="landmark-ckpt-"))
    try:
        import torch  # only a writer needs it; readers of metrics.json and previews do not

        torch.save(state, folder / CHECKPOINT_FILE)
        (folder / METRICS_FILE).write_text(json.dumps(metrics))
        if preview is not None:
            np.savez_compressed(folder / PREVIEW_FILE, **preview)
        for name, table in tables.items():
            (folder / f"{name}_per_landmark.txt").write_text(table + "\n")
        report(metrics, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
