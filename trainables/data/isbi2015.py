"""Reader for the ISBI 2015 cephalometric X-ray dataset (19 landmarks, 400 images).

Expected layout (the real dataset; trainables/data/phantom.py writes the same one):

    ROOT/RawImage/TrainingData/001.bmp ... 150.bmp      split "train"
    ROOT/RawImage/Test1Data/151.bmp ... 300.bmp         split "test1"
    ROOT/RawImage/Test2Data/301.bmp ... 400.bmp         split "test2"
    ROOT/AnnotationsByMD/400_senior/001.txt ... 400.txt
    ROOT/AnnotationsByMD/400_junior/001.txt ... 400.txt

Each annotation file starts with 19 "x,y" lines (pixels of the full-size image, x = column,
y = row, pixel centres at integers); any further lines are other labels and are ignored.

Usage:

    from trainables.data import isbi2015
    problems = isbi2015.layout_problems(root)          # [] when the layout looks fine (cheap)
    problems = isbi2015.check(root)                    # every problem with every file, `file:line: what`
    records = isbi2015.load_split(root, "train")       # parses annotations, decodes no image
    image = isbi2015.read_image(records[0].image_path) # (H, W) uint8, decoded on demand

Quick check from a shell:

    python -m trainables.data.isbi2015 ROOT            # prints check()'s problems (exit 2), or per-split counts
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from trainables.data.checks import ImageHeaders, outside, outside_message, parsed_once
from trainables.data.record import (
    DatasetFormatError,
    Record,
    check_folder_cli,
    raise_problems,
    read_text_lines,
    root_problems,
)

# Re-exported: isbi2015.read_image is the loader's documented decoder (module docstring above).
from trainables.data.record import read_image  # noqa: F401

SPACING_MM = 0.1  # mm per pixel of the full-size images (stated by the challenge organisers)
SPLIT_DIRS = {"train": "TrainingData", "test1": "Test1Data", "test2": "Test2Data"}
ANNOTATOR_DIRS = {"senior": "400_senior", "junior": "400_junior"}
ANNOTATORS = ("mean", "senior", "junior")  # "mean" = average of the two doctors (FARNet paper's ground truth)
# The 19 landmarks in annotation-file order (Wang et al. 2016, the ISBI 2015 challenge paper, Table 1: L1-L19).
LANDMARK_NAMES = (
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale",
    "supramentale",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
    "lower incisal incision",
    "upper incisal incision",
    "upper lip",
    "lower lip",
    "subnasale",
    "soft tissue pogonion",
    "posterior nasal spine",
    "anterior nasal spine",
    "articulare",
)


def parse_annotation(path: Path, num_landmarks: int = 19) -> tuple[np.ndarray | None, list[str]]:
    """The first `num_landmarks` "x,y" lines of an annotation file -> ((K, 2) float64 pixels, problems).

    Every problem is found, each `file:line: what` (`file: what` without a line); the array is
    None when there is any. Tolerates CRLF line endings, a UTF-8 BOM, whitespace around the
    numbers, float text ("12.0, 880") and any number of trailing lines (other labels, blank lines).
    """
    path = Path(path)
    try:
        lines = read_text_lines(path, "annotation file")
    except DatasetFormatError as e:
        return None, [str(e)]
    block = [_xy(line) for line in lines[:num_landmarks]]
    # The landmark lines end at the last "x,y" line of the block; a line that is not "x,y" before it
    # is a bad landmark line, after it the file's other labels begin (too few landmarks).
    last = max((i for i, v in enumerate(block) if v is not None), default=-1)
    problems = [f'{path}:{i + 1}: expected "x,y" numbers, got "{lines[i]}"' for i in range(last) if block[i] is None]
    if last + 1 < num_landmarks:
        found = sum(v is not None for v in block)
        problems.append(f'{path}: found {found} "x,y" landmark lines, expected {num_landmarks}')
    if problems:
        return None, problems
    return np.array(block, dtype=np.float64), []


def _xy(line: str) -> tuple[float, float] | None:
    """ "x,y" -> (x, y), two finite numbers (whitespace around them allowed); None for anything else."""
    parts = line.split(",")
    if len(parts) != 2:
        return None
    try:
        x, y = float(parts[0]), float(parts[1])  # float() ignores surrounding whitespace
    except ValueError:
        return None
    return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def read_annotation(path: Path, num_landmarks: int = 19) -> np.ndarray:
    """parse_annotation's landmarks -> (K, 2) float64 pixels; DatasetFormatError naming the first problem."""
    xy, problems = parse_annotation(path, num_landmarks)
    raise_problems(problems)
    return xy


def _split_images(root: Path, split: str) -> list[Path]:
    """The *.bmp files of a split folder, sorted by name (no decoding)."""
    image_dir = root / "RawImage" / SPLIT_DIRS[split]
    if not image_dir.is_dir():
        raise DatasetFormatError(f"{image_dir}: image folder of split {split!r} not found")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".bmp" and p.is_file())
    if not images:
        raise DatasetFormatError(f"{image_dir}: no .bmp images in the folder of split {split!r}")
    return images


def load_split(root: Path, split: str, num_landmarks: int = 19, annotator: str = "mean") -> list[Record]:
    """All records of one split, sorted by id. Parses every annotation now; decodes no image.

    annotator: "senior", "junior", or "mean" (the average of the two, FARNet's ground truth).
    """
    if split not in SPLIT_DIRS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_DIRS)}")
    if annotator not in ANNOTATORS:
        raise ValueError(f"unknown annotator {annotator!r}; valid annotators: {', '.join(ANNOTATORS)}")
    if num_landmarks < 1:
        raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
    root = Path(root)
    doctors = ("senior", "junior") if annotator == "mean" else (annotator,)

    records = []
    for image_path in _split_images(root, split):
        rid = image_path.stem
        marks = []
        for doctor in doctors:
            ann = root / "AnnotationsByMD" / ANNOTATOR_DIRS[doctor] / f"{rid}.txt"
            if not ann.is_file():
                raise DatasetFormatError(f"{ann}: annotation file not found (needed for image {image_path})")
            marks.append(read_annotation(ann, num_landmarks))
        landmarks = marks[0] if len(marks) == 1 else (marks[0] + marks[1]) / 2.0
        records.append(Record(id=rid, image_path=image_path, landmarks=landmarks, spacing_mm=SPACING_MM))
    return records


def layout_problems(root: Path) -> list[str]:
    """Human-readable problems with the folder layout; [] when it looks fine.

    Cheap (existence checks only, nothing is parsed or decoded). check() adds the files' contents.
    """
    root = Path(root)
    problems = root_problems(root)
    if problems:
        return problems
    for sub in ("RawImage", "AnnotationsByMD"):
        if not (root / sub).is_dir():
            problems.append(f"{root / sub}: folder missing (the ISBI 2015 layout has RawImage/ and AnnotationsByMD/)")
    if problems:
        return problems

    ann_dirs = {doctor: root / "AnnotationsByMD" / d for doctor, d in ANNOTATOR_DIRS.items()}
    for d in ann_dirs.values():
        if not d.is_dir():
            problems.append(f"{d}: annotation folder missing")
    for split, d in SPLIT_DIRS.items():
        image_dir = root / "RawImage" / d
        if not image_dir.is_dir():
            problems.append(f"{image_dir}: image folder of split {split!r} missing")
            continue
        ids = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() == ".bmp")
        if not ids:
            problems.append(f"{image_dir}: no .bmp images in the folder of split {split!r}")
            continue
        for ann_dir in ann_dirs.values():
            if not ann_dir.is_dir():
                continue
            missing = [i for i in ids if not (ann_dir / f"{i}.txt").is_file()]
            if missing:
                shown = ", ".join(f"{i}.txt" for i in missing[:3]) + (", ..." if len(missing) > 3 else "")
                problems.append(f"{ann_dir}: {len(missing)} annotation files missing for split {split!r} ({shown})")
    return problems


def check(root: Path, num_landmarks: int = 19, cache_dir: Path | None = None) -> list[str]:
    """Every problem with the dataset, `file:line: what`: the layout, each image's header (through the
    header cache in cache_dir, see checks.py), each annotation parsed in full, and each landmark
    inside its image. [] when every split loads and every landmark lies on its image."""
    root = Path(root)
    problems = layout_problems(root)
    if not all((root / sub).is_dir() for sub in ("RawImage", "AnnotationsByMD")):
        return problems
    with ImageHeaders(cache_dir) as headers:
        for d in SPLIT_DIRS.values():
            image_dir = root / "RawImage" / d
            if not image_dir.is_dir():
                continue  # layout_problems said so
            for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".bmp" and p.is_file()):
                try:
                    info = headers.read(image)
                except DatasetFormatError as e:
                    problems.append(str(e))
                    info = None
                for ann_dir in ANNOTATOR_DIRS.values():
                    ann = root / "AnnotationsByMD" / ann_dir / f"{image.stem}.txt"
                    if not ann.is_file():
                        continue  # layout_problems said so
                    xy, bad = parsed_once(ann, parse_annotation, num_landmarks)
                    problems += bad
                    if xy is not None and info is not None:
                        problems += [
                            f"{ann}:{k + 1}: {outside_message(k, xy[k], info, image)}" for k in outside(xy, info)
                        ]
    return problems


def _describe(root: Path):
    for split in SPLIT_DIRS:
        recs = load_split(root, split)
        yield f"{split}: {len(recs)} images ({recs[0].id}..{recs[-1].id})"


if __name__ == "__main__":
    check_folder_cli("isbi2015", check, _describe)
