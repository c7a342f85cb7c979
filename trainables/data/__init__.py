"""Dataset registry, keyed by the YAML name `data.dataset`: phantom | isbi2015 | hand | 300w.

Every dataset yields records (image path, float landmark coordinates in pixels, mm/px, an
optional crop box); `LandmarkDataset` turns them into tensors at the input size, through an
on-disk cache of the decoded, resized images.

    recs = records(cfg.data, "train")    # list[Record]
    problems(cfg.data)                   # [] when the data can be read; checked before any trial:
                                         # every image header and annotation (checks.py), cached per file;
                                         # Problem.NOTE entries (faces cut by the frame) refuse nothing
    DATASETS["300w"].unit                # "nme": faces are scored by NME, the others in mm
    landmark_names("isbi2015", 19)       # ["sella", "nasion", …] in annotation order; None where unnamed
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.data import face300w, hand, isbi2015, phantom
from trainables.data.cache import default_cache_dir
from trainables.data.record import DatasetFormatError, Record, read_image
from trainables.problems import Problem

# Where phantom data is generated when data.root is empty; on a cluster each node makes its
# own (identical, seeded) copy.
DATA_HOME = Path(os.environ.get("LANDMARK_STUDY_DATA", Path.home() / ".cache" / "landmark_study"))
MAX_PROBLEMS = 30  # lines of data problems shown in spec validation


@dataclass(frozen=True)
class DatasetSpec:
    records: Callable  # (DataConfig, split) -> list[Record]
    problems: Callable  # (DataConfig) -> list[str] naming the config key: the config, then every data file
    flip_index: Callable  # K -> K ints: the landmark a horizontally flipped landmark k becomes
    unit: str = "mm"  # "mm": radial errors through the pixel spacing; "nme": normalised by nme_pair's distance
    nme_pair: tuple[int, int] | None = None
    read_image: Callable[[Path], np.ndarray] = read_image  # path -> (H, W) uint8
    landmark_names: tuple[str, ...] = ()  # names of the first len(names) landmarks, in annotation order


def phantom_root(cfg) -> Path:
    if cfg.root:
        return Path(cfg.root).expanduser()
    key = json.dumps(dataclasses.asdict(cfg.phantom), sort_keys=True)
    return DATA_HOME / f"phantom-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _root(cfg) -> Path:
    return Path(cfg.root).expanduser()


def _under(key: str, problems: list) -> list[Problem]:
    """A loader's problems reported under a config key, keeping their kind (a missing root stays MISSING)."""
    return [Problem.of(p).under(key) if isinstance(p, Problem) else Problem(key, p) for p in problems]


def _root_problem(cfg, holds: str) -> list[str]:
    return [] if cfg.root else [f"data.root: {cfg.dataset} needs the dataset folder (holding {holds})"]


def _splits_problems(cfg, valid: list[str]) -> list[str]:
    return [
        f"data.{key}: unknown split {getattr(cfg, key)!r}; choose one of {valid}"
        for key in ("train_split", "val_split")
        if getattr(cfg, key) not in valid
    ]


# --- isbi2015 and phantom (the phantom is written in the ISBI 2015 layout) ----------------------


def _isbi_problems(cfg) -> list[str]:
    out = _splits_problems(cfg, list(isbi2015.SPLIT_DIRS))
    if cfg.annotator not in isbi2015.ANNOTATORS:
        out.append(f"data.annotator: unknown {cfg.annotator!r}; choose one of {list(isbi2015.ANNOTATORS)}")
    if cfg.dataset == "phantom":
        if cfg.num_landmarks != cfg.phantom.num_landmarks:
            out.append(
                f"data.num_landmarks: {cfg.num_landmarks} but data.phantom.num_landmarks is "
                f"{cfg.phantom.num_landmarks}; set them equal"
            )
        if cfg.root and _root(cfg).exists():  # a phantom this code did not just generate: check it as ISBI
            out += _under("data.root", isbi2015.check(_root(cfg), cfg.num_landmarks, default_cache_dir()))
        return out
    if not cfg.root:
        return out + _root_problem(cfg, "RawImage/ and AnnotationsByMD/")
    return out + _under("data.root", isbi2015.check(_root(cfg), cfg.num_landmarks, default_cache_dir()))


def _isbi_records(cfg, split: str) -> list[Record]:
    root = phantom.ensure(phantom_root(cfg), cfg.phantom) if cfg.dataset == "phantom" else _root(cfg)
    return isbi2015.load_split(root, split, cfg.num_landmarks, cfg.annotator)


def _same_landmarks(k: int) -> tuple[int, ...]:
    # A mirrored lateral cephalogram or hand radiograph shows the same anatomy: identities stay.
    return tuple(range(k))


# --- hand --------------------------------------------------------------------------------------


def _hand_problems(cfg) -> list[str]:
    out = _root_problem(cfg, "all.csv, images/ and splits/")
    if out:
        return out
    files = _under("data.root", hand.check(_root(cfg), cfg.num_landmarks, default_cache_dir()))
    if files:
        return files
    a, b = cfg.hand.ruler
    if not (0 <= a < cfg.num_landmarks and 0 <= b < cfg.num_landmarks) or a == b:
        out.append(f"data.hand.ruler: two distinct landmark indices in 0..{cfg.num_landmarks - 1}, got {[a, b]}")
    if not cfg.hand.ruler_mm > 0:
        out.append(f"data.hand.ruler_mm: must be > 0, got {cfg.hand.ruler_mm}")
    for key in ("train_split", "val_split"):
        try:
            hand.split_stems(_root(cfg), getattr(cfg, key))  # the loader's own rule: stems joined by +, no repeats
        except ValueError as err:
            out.append(f"data.{key}: {err}")
    if out:
        return out
    for key in ("train_split", "val_split"):  # what depends on the split: its ruler landmarks, ids in two joined files
        try:
            _hand_records(cfg, getattr(cfg, key))
        except DatasetFormatError as err:
            out += [Problem(f"data.{key}", p) for p in err.problems]
    return out


def _hand_records(cfg, split: str) -> list[Record]:
    return hand.load_split(_root(cfg), split, cfg.num_landmarks, tuple(cfg.hand.ruler), cfg.hand.ruler_mm)


# --- 300w --------------------------------------------------------------------------------------


def _face_problems(cfg) -> list[str]:
    out = _splits_problems(cfg, list(face300w.SPLITS))
    if cfg.num_landmarks != face300w.NUM_LANDMARKS:
        out.append(f"data.num_landmarks: 300w has {face300w.NUM_LANDMARKS} landmarks, got {cfg.num_landmarks}")
    if not cfg.face.crop_scale > 0:
        out.append(f"data.face.crop_scale: must be > 0, got {cfg.face.crop_scale}")
    if not cfg.root:
        return out + _root_problem(cfg, "afw/, helen/, lfpw/ and ibug/")
    out += _under("data.root", face300w.check(_root(cfg), face300w.NUM_LANDMARKS, default_cache_dir()))
    for key in ("train_split", "val_split"):
        if getattr(cfg, key) == "test":
            out += _under(f"data.{key}", face300w.split_problems(_root(cfg), "test"))
    return out


def _face_records(cfg, split: str) -> list[Record]:
    return face300w.load_split(_root(cfg), split, cfg.num_landmarks, cfg.face.crop_scale)


def _face_flip(k: int) -> tuple[int, ...]:
    return face300w.FLIP_INDEX


DATASETS = {
    "phantom": DatasetSpec(_isbi_records, _isbi_problems, _same_landmarks, landmark_names=phantom.LANDMARK_NAMES),
    "isbi2015": DatasetSpec(_isbi_records, _isbi_problems, _same_landmarks, landmark_names=isbi2015.LANDMARK_NAMES),
    "hand": DatasetSpec(_hand_records, _hand_problems, _same_landmarks, read_image=hand.read_hand_image),
    "300w": DatasetSpec(_face_records, _face_problems, _face_flip, unit="nme", nme_pair=face300w.IOD_PAIR),
}


def landmark_names(dataset: str | None, k: int) -> list[str] | None:
    """The names of a dataset's k landmarks (ISBI 2015's 19, the phantom's), or None where the
    dataset names none or fewer than k (hand; 300-W is drawn by face region instead)."""
    spec = DATASETS.get(dataset or "")
    names = spec.landmark_names if spec else ()
    return list(names[:k]) if 0 < k <= len(names) else None


def records(cfg, split: str) -> list[Record]:
    return DATASETS[cfg.dataset].records(cfg, split)


def problems(cfg) -> list[str]:
    """What stops this data config from being read, as messages naming the config key.

    Reads every image header and parses every annotation of the dataset (once per file: see
    trainables/data/checks.py); a missing root alone is Problem.MISSING, which a dry run tolerates.
    Notes (Problem.NOTE: worth saying, wrong in nothing) come last, never cut by MAX_PROBLEMS.
    """
    if cfg.num_landmarks < 1:
        return [f"data.num_landmarks: must be at least 1, got {cfg.num_landmarks}"]
    found = DATASETS[cfg.dataset].problems(cfg)
    notes = [p for p in found if Problem.of(p).kind == Problem.NOTE]
    found = [p for p in found if Problem.of(p).kind != Problem.NOTE]
    if len(found) > MAX_PROBLEMS:  # one wrong setting (data.num_landmarks) can flag every file
        found = found[:MAX_PROBLEMS] + [
            Problem(
                "data.root",
                f"… and {len(found) - MAX_PROBLEMS} more problems; "
                f"`python -m trainables.data.{_module(cfg)} ROOT` lists them all",
            )
        ]
    return found + notes


def _module(cfg) -> str:
    return {"phantom": "isbi2015", "300w": "face300w"}.get(cfg.dataset, cfg.dataset)


def split_problems(cfg, split: str, key: str) -> list[str]:
    """Problems of one more split name (e.g. eval.split) under config key `key`."""
    return [
        Problem.of(p).renamed(key)
        for p in problems(dataclasses.replace(cfg, train_split=split))
        if Problem.of(p).path == "data.train_split"
    ]
