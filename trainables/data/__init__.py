"""Dataset registry, keyed by the YAML name `data.dataset`.

Every dataset yields records (image path, float landmark coordinates in pixels, mm/px);
`LandmarkDataset` turns them into tensors at the input size.

    recs = records(cfg.data, "train")    # list[Record]
    problems(cfg.data)                   # [] when the data can be read; checked before any trial
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from trainables.data import isbi2015, phantom

# Where phantom data is generated when data.root is empty; on a cluster each node makes its
# own (identical, seeded) copy.
DATA_HOME = Path(os.environ.get("LANDMARK_STUDY_DATA", Path.home() / ".cache" / "landmark_study"))


def phantom_root(cfg) -> Path:
    if cfg.root:
        return Path(cfg.root).expanduser()
    key = json.dumps(dataclasses.asdict(cfg.phantom), sort_keys=True)
    return DATA_HOME / f"phantom-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _isbi_records(cfg, split: str) -> list[isbi2015.Record]:
    return isbi2015.load_split(Path(cfg.root).expanduser(), split, cfg.num_landmarks, cfg.annotator)


def _phantom_records(cfg, split: str) -> list[isbi2015.Record]:
    root = phantom.ensure(phantom_root(cfg), cfg.phantom)
    return isbi2015.load_split(root, split, cfg.num_landmarks, cfg.annotator)


def _isbi_problems(cfg) -> list[str]:
    if not cfg.root:
        return ["data.root: isbi2015 needs the dataset folder (holding RawImage/ and AnnotationsByMD/)"]
    return [f"data.root: {p}" for p in isbi2015.layout_problems(Path(cfg.root).expanduser())]


def _phantom_problems(cfg) -> list[str]:
    out = []
    if cfg.num_landmarks != cfg.phantom.num_landmarks:
        out.append(
            f"data.num_landmarks: {cfg.num_landmarks} but data.phantom.num_landmarks is "
            f"{cfg.phantom.num_landmarks}; set them equal"
        )
    if cfg.root and Path(cfg.root).expanduser().exists():
        out += [f"data.root: {p}" for p in isbi2015.layout_problems(Path(cfg.root).expanduser())]
    return out


DATASETS = {"isbi2015": _isbi_records, "phantom": _phantom_records}
_PROBLEMS = {"isbi2015": _isbi_problems, "phantom": _phantom_problems}
SPLITS = tuple(isbi2015.SPLIT_DIRS)


def records(cfg, split: str) -> list[isbi2015.Record]:
    return DATASETS[cfg.dataset](cfg, split)


def problems(cfg) -> list[str]:
    """What stops this data config from being read, as messages naming the config key."""
    out = []
    for key in ("train_split", "val_split"):
        if getattr(cfg, key) not in SPLITS:
            out.append(f"data.{key}: unknown split {getattr(cfg, key)!r}; choose one of {list(SPLITS)}")
    if cfg.annotator not in isbi2015.ANNOTATORS:
        out.append(f"data.annotator: unknown {cfg.annotator!r}; choose one of {list(isbi2015.ANNOTATORS)}")
    return out + _PROBLEMS[cfg.dataset](cfg)
