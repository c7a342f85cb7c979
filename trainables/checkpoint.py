"""A trial's checkpoint folder: what `fit` writes and what the driver and dashboards read.

    <checkpoint>/checkpoint.pt          model, optimizer, σ schedule, RNG, epoch, … (torch.save)
    <checkpoint>/metrics.json           the epoch's reported metrics
    <checkpoint>/history.json           every epoch's reported metrics up to this one, in order
    <checkpoint>/preview.npz            the arrays behind the trial's pictures (Scorer.preview)
    <checkpoint>/<name>_per_landmark.txt  the final test's per-landmark table (last epoch only)
    <checkpoint>/manifest.json          written last: every other file's name and size in bytes

history.json lets a resume deliver epochs that were reported but never reached the tracking
(a driver killed while Train went on for a moment and saved this checkpoint): study.tracking
replays the epochs its run lacks. Folders written before it existed resume without that replay.

A folder is complete only when its manifest is there and every file it lists has that size: a
checkpoint whose writer (or whose copy to the study storage, which copies files in any order) was
killed or ran out of disk is never taken for a complete one. `check_complete(folder)` raises
`IncompleteCheckpoint` naming the file that is short or missing; `fit(resume_from=...)` calls it.
A folder written before manifests existed (no manifest.json, no history.json) counts as complete
when its checkpoint.pt loads with `torch.load(weights_only=True)` and its metrics.json reads.

Plain files, no torch needed to read metrics.json or preview.npz (dashboards/ reads them).

Which epochs write one (`CheckpointPolicy`, `train.checkpoint_*`): every `checkpoint_every`-th
epoch, the last epoch, and each epoch that improves on the best value so far of
`checkpoint_metric` (a study sets its primary objective, by which Ray Train keeps its best
checkpoints and the driver picks the trial's best epoch: so the best epoch is never missing).
Every checkpoint is complete, optimizer state included: when it is written it is the newest one,
and the newest is what Ray Train resumes from (`ray.train.get_checkpoint`). Other epochs report
their metrics with no checkpoint.

    policy = CheckpointPolicy(every=0, epochs=300, metric="val/mre_mm", mode="min")   # every 10
    policy.due(epoch=13, metrics={"val/mre_mm": 2.1})   # True if 2.1 beats the best so far

The folders of one Train run (`train/train_<trial>/checkpoint_*`), on a local folder or a URI
(s3://, gs://: through pyarrow), are read through `TrainRun`, by the driver, the worker and the
dashboards alike:

    run = TrainRun("studies/quickstart/train/train_1a2b3c4d")   # or a URI; or TrainRun(path, fs=...)
    run.folders()              # the checkpoint_* folders (pyarrow FileInfo), by name
    run.saved_metrics()        # (path, metrics.json) of each folder whose metrics read, oldest epoch first
    run.history("checkpoint_000003"), run.furthest_history()    # history.json of one / of the furthest
    run.newest_complete()      # (epoch, folder) of the newest complete one (local runs)
    run.unregistered()         # folders Train's checkpoint_manager_snapshot.json does not name
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.fs

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"  # the epoch's reported metrics, beside its checkpoint
HISTORY_FILE = "history.json"  # [metrics of epoch 1, …, of this epoch]: what a resume can replay
PREVIEW_FILE = "preview.npz"  # the arrays behind the trial's pictures (Scorer.preview)
MANIFEST_FILE = "manifest.json"  # written last: {file name: bytes} of everything else in the folder
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Train's record of a run's checkpoints (rewritten in place)
BROKEN = ".broken"  # a state file that could not be read is kept under its name + this (study.faults.integrity)

Report = Callable[[dict, "Path | None"], None]


def report_with_checkpoint(
    report: Report,
    metrics: dict,
    rank: int,
    state: dict,
    tables: dict[str, str],
    preview: dict | None,
    history: list[dict] | None = None,
) -> None:
    """Report with a checkpoint folder holding checkpoint.pt, the metrics (metrics.json: a run
    interrupted between saving and delivering them can report them again on resume), the metrics
    of every epoch so far (history.json, this one last), preview.npz (Scorer.preview) and, at the
    end, <name>_per_landmark.txt tables."""
    if rank != 0:
        report(metrics, None)
        return
    folder = Path(tempfile.mkdtemp(prefix="landmark-ckpt-"))
    try:
        import torch  # only a writer needs it; readers of metrics.json and previews do not

        torch.save(state, folder / CHECKPOINT_FILE)
        (folder / METRICS_FILE).write_text(json.dumps(metrics))
        (folder / HISTORY_FILE).write_text(json.dumps(history if history is not None else [metrics]))
        if preview is not None:
            np.savez_compressed(folder / PREVIEW_FILE, **preview)
        for name, table in tables.items():
            (folder / f"{name}_per_landmark.txt").write_text(table + "\n")
        write_manifest(folder)
        report(metrics, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def saved_history(folder: Path) -> list[dict]:
    """The metrics of every epoch up to a checkpoint's, in order: its history.json, else (a folder
    written before history.json existed) its own metrics.json alone, else []."""
    for name, wrap in ((HISTORY_FILE, False), (METRICS_FILE, True)):
        path = Path(folder) / name
        if path.is_file():
            saved = json.loads(path.read_text())
            return [saved] if wrap else saved
    return []


class IncompleteCheckpoint(RuntimeError):
    """A checkpoint folder whose writing (or copying) did not finish."""


def write_manifest(folder: Path) -> None:
    """Record every file's size in manifest.json, written to a temporary name and renamed: the
    manifest exists only once everything it lists has been written."""
    sizes = {
        f.name: f.stat().st_size for f in sorted(Path(folder).iterdir()) if f.is_file() and f.name != MANIFEST_FILE
    }
    tmp = Path(folder) / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(sizes))
    tmp.replace(Path(folder) / MANIFEST_FILE)


def check_complete(folder: Path) -> None:
    """Raise IncompleteCheckpoint unless `folder` holds its manifest and every file at its listed size."""
    folder = Path(folder)
    try:
        sizes = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        problem = _unmanifested_problem(folder)
        if problem:
            raise IncompleteCheckpoint(
                f"{folder}: no {MANIFEST_FILE}, so its writing never finished "
                f"(the process was killed or the disk was full): {problem}"
            ) from None
        return
    except ValueError as e:
        raise IncompleteCheckpoint(f"{folder}/{MANIFEST_FILE}: unreadable ({e})") from None
    for name, size in sizes.items():
        path = folder / name
        have = path.stat().st_size if path.is_file() else None
        if have != size:
            raise IncompleteCheckpoint(
                f"{path}: {'missing' if have is None else f'{have} bytes'}, the manifest "
                f"says {size}; the checkpoint was not completely written or copied"
            )


def _unmanifested_problem(folder: Path) -> str:
    """'' if a folder without a manifest is a whole checkpoint written before manifests existed: no
    history.json (which came with them: with it, the manifest is what is missing), metrics.json
    (if any) reads, and checkpoint.pt loads (torch.load, weights_only); else what is wrong."""
    if (folder / HISTORY_FILE).exists():
        return f"{HISTORY_FILE} is there, so {MANIFEST_FILE} was due"
    if (folder / METRICS_FILE).exists():
        try:
            json.loads((folder / METRICS_FILE).read_text())
        except ValueError as e:
            return f"{METRICS_FILE} is cut short ({e})"
    if not (folder / CHECKPOINT_FILE).is_file():
        return f"no {CHECKPOINT_FILE}"
    try:
        import torch  # only a folder from before the manifests costs a load

        torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch says, the file is not a whole checkpoint
        return f"{CHECKPOINT_FILE} does not load ({type(e).__name__}: {str(e)[:200]})"
    return ""


def is_complete(folder: Path) -> bool:
    try:
        check_complete(folder)
    except IncompleteCheckpoint:
        return False
    return True


def filesystem(path: str | Path) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem and the path in it, for a local folder (relative to the working
    directory) or a URI (file://, s3://, gs://, ...)."""
    path = str(path)
    return pyarrow.fs.FileSystem.from_uri(path if "://" in path else Path(path).resolve().as_uri())


class TrainRun:
    """The checkpoint folders of one Train run: `path` a local folder or a URI, or, with `fs`, a
    path in that filesystem."""

    def __init__(self, path: str | Path, fs: pyarrow.fs.FileSystem | None = None):
        self.fs, self.root = (fs, str(path)) if fs is not None else filesystem(path)
        self.local = Path(self.root) if isinstance(self.fs, pyarrow.fs.LocalFileSystem) else None

    def _entries(self) -> dict[str, pyarrow.fs.FileInfo]:
        found = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        return {e.base_name: e for e in sorted(found, key=lambda e: e.base_name)}

    def folders(self, entries: dict[str, pyarrow.fs.FileInfo] | None = None) -> list[pyarrow.fs.FileInfo]:
        """The run's checkpoint_* folders, by name ([] if there is no run); not the snapshot file."""
        entries = self._entries() if entries is None else entries
        return [
            e
            for name, e in entries.items()
            if name.startswith("checkpoint_") and e.type == pyarrow.fs.FileType.Directory
        ]

    def read_json(self, name: str):
        """A JSON file of the run ("checkpoint_000003/history.json"); raises OSError or ValueError."""
        with self.fs.open_input_stream(f"{self.root}/{name}") as f:
            return json.loads(f.read())

    def saved_metrics(self) -> list[tuple[str, dict]]:
        """(path, metrics.json) of each folder whose metrics read, oldest epoch first."""
        found = []
        for info in self.folders():
            try:
                found.append((info.path, self.read_json(f"{info.base_name}/{METRICS_FILE}")))
            except (OSError, ValueError):
                continue  # written when the trial was killed: incomplete
        return sorted(found, key=lambda c: c[1].get("epoch", 0))

    def history(self, folder: str) -> list[dict]:
        """The history.json of checkpoint `folder` (a name); [] for one written before history.json existed."""
        try:
            return self.read_json(f"{folder}/{HISTORY_FILE}")
        except FileNotFoundError:
            return []

    def furthest_history(self) -> list[dict]:
        """The history.json with the most epochs among the run's folders (registered by Train or not),
        else []."""
        furthest: list[dict] = []
        for info in self.folders():
            try:
                history = self.read_json(f"{info.base_name}/{HISTORY_FILE}")
            except (OSError, ValueError):
                continue  # cut short when the worker died, or written before history.json existed
            if isinstance(history, list) and len(history) > len(furthest):
                furthest = history
        return furthest

    def newest_complete(self, skip: str | None = None) -> tuple[int, Path] | None:
        """(epoch, folder) of the complete folder (check_complete) with the latest epoch, other than
        `skip` (a name); None if there is none. Local and NFS runs only (None on a URI)."""
        if self.local is None:
            return None
        found = []
        for info in self.folders():
            folder = Path(info.path)
            if info.base_name != skip and is_complete(folder):
                try:
                    found.append((json.loads((folder / METRICS_FILE).read_text()).get("epoch", 0), folder))
                except (OSError, ValueError):
                    continue
        return max(found) if found else None

    def unregistered(self) -> list[pyarrow.fs.FileInfo]:
        """The folders Train's checkpoint_manager_snapshot.json does not name (a worker writes a checkpoint
        before its controller registers it). [] when the snapshot is unreadable, or was moved aside
        (BROKEN, study.faults.integrity): then the folders are what the trial continues from."""
        entries = self._entries()
        folders = self.folders(entries)
        if not folders or (TRAIN_SNAPSHOT not in entries and f"{TRAIN_SNAPSHOT}{BROKEN}" in entries):
            return []
        try:
            registered = registered_checkpoints(self.read_json(TRAIN_SNAPSHOT)) if TRAIN_SNAPSHOT in entries else set()
        except (OSError, ValueError):
            return []
        return [f for f in folders if f.base_name not in registered]


def registered_checkpoints(snapshot: dict) -> set[str]:
    """Every checkpoint folder name Train's checkpoint_manager_snapshot.json refers to."""
    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "checkpoint_dir_name" and isinstance(value, str):
                    names.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                if isinstance(value, str) and value.startswith("checkpoint_"):
                    names.add(value)
                else:
                    walk(value)

    walk(snapshot)
    return names


# The default cadence keeps a trial to this many periodic checkpoints, whatever its length.
PERIODIC_CHECKPOINTS = 30


class CheckpointPolicy:
    """Which epochs write a checkpoint: each `every`-th (0 = ceil(epochs / 30)), the last, and
    those whose `metric` beats the best value so far in direction `mode` ("" = no metric).

    The best value is state: a resumed trial judges improvement against the same best.
    """

    def __init__(self, every: int, epochs: int, metric: str = "", mode: str = "min"):
        self.every = every or max(1, math.ceil(epochs / PERIODIC_CHECKPOINTS))
        self.epochs, self.metric, self.mode = epochs, metric, mode
        self.best: float | None = None

    def improves(self, metrics: dict) -> bool:
        """Whether metrics[metric] is finite and strictly better than the best so far (then it is the best)."""
        value = metrics.get(self.metric) if self.metric else None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.best is not None and not (value < self.best if self.mode == "min" else value > self.best):
            return False
        self.best = float(value)
        return True

    def due(self, epoch: int, metrics: dict) -> bool:
        """Whether 1-based `epoch`, which reported `metrics`, writes a checkpoint."""
        improved = self.improves(metrics)  # always evaluated, so that the best so far stays current
        return improved or epoch % self.every == 0 or epoch >= self.epochs

    def state_dict(self) -> dict:
        return {"metric": self.metric, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best") if state.get("metric") == self.metric else None  # another metric: start over
