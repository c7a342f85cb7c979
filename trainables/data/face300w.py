"""Reader for the 300-W face-alignment dataset (68 landmarks), in the layout of the public release.

Expected layout (each folder holds images, .jpg/.jpeg/.png, each with a .pts file of the same stem):

    ROOT/afw/                          train
    ROOT/helen/trainset/               train
    ROOT/lfpw/trainset/                train
    ROOT/helen/testset/                common
    ROOT/lfpw/testset/                 common
    ROOT/ibug/                         challenging
    ROOT/300W/01_Indoor/               test (the private test set; optional)
    ROOT/300W/02_Outdoor/              test

Splits, the field's standard: train (3148 faces), common (554), challenging (135),
full = common + challenging (689), test (600). See SPLITS.

A .pts file:

    version: 1
    n_points: 68
    {
    x y                                68 lines, floats, 1-based (Matlab) pixel coordinates
    }

Coordinates are shifted by -1 on reading, so pixel centres are at integers (0-based): the file's
x = 1 is the centre of the first column, x = W the centre of the last, read as W - 1. The image
covers the file's [0.5, W + 0.5] × [0.5, H + 0.5], read as [-0.5, W - 0.5] × [-0.5, H - 0.5];
a point on the last column or row is inside it, and so is one on the outer edge (x = W + 0.5).
There is no physical scale: spacing_mm is NaN and errors are normalised by the inter-ocular
distance (IOD_PAIR, the outer eye corners). Each record's crop is the square ground-truth face
box: centred on the landmarks' bounding box, side crop_scale × its longer side (adaloss paper
§4.3); it may extend beyond the image, whoever crops pads (black).

Points outside their image are kept: in-the-wild photos cut faces (a jaw or brow past the
border). check() counts them in one Problem.NOTE instead of refusing them (checks.outside_note);
the crop pads, a target that misses the heatmap adds no loss (trainables/objective.py), and
every point is scored, as the 300-W protocol scores all 68.

Usage:

    from trainables.data import face300w
    problems = face300w.layout_problems(root)          # [] when train/common/challenging look fine
    face300w.split_problems(root, "test")              # same, for one split (e.g. the private set)
    face300w.check(root)                               # every problem with every file, `file:line: what`
    records = face300w.load_split(root, "train")       # parses every .pts, decodes no image
    image = face300w.read_image(records[0].image_path) # (H, W) uint8 grayscale, decoded on demand

Quick check from a shell:

    python -m trainables.data.face300w ROOT            # prints check()'s problems (exit 2), or per-split counts
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from trainables.data.checks import ImageHeaders, outside, outside_message, outside_note, parsed_once
from trainables.data.record import (
    DatasetFormatError,
    Record,
    check_folder_cli,
    raise_problems,
    read_text_lines,
    root_problems,
)

# Re-exported: face300w.read_image is the loader's documented decoder (module docstring above).
from trainables.data.record import read_image  # noqa: F401

NUM_LANDMARKS = 68
IOD_PAIR = (36, 45)  # outer eye corners, 0-based: the NME normaliser (inter-ocular distance)
# Partner of each landmark under a horizontal flip (image-left <-> image-right), the standard
# 68-point (Multi-PIE) map. Apply as: xy[:, 0] = W - 1 - xy[:, 0]; xy = xy[FLIP_INDEX].
# fmt: off
FLIP_INDEX = (
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,  # 0-16 jaw, 8 = chin fixed
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17,                    # 17-26 brows
    27, 28, 29, 30,                                            # 27-30 nose bridge, fixed
    35, 34, 33, 32, 31,                                        # 31-35 nostrils, 33 fixed
    45, 44, 43, 42, 47, 46,                                    # 36-41 left eye -> right eye
    39, 38, 37, 36, 41, 40,                                    # 42-47 right eye -> left eye
    54, 53, 52, 51, 50, 49, 48,                                # 48-54 upper outer lip, 51 fixed
    59, 58, 57, 56, 55,                                        # 55-59 lower outer lip, 57 fixed
    64, 63, 62, 61, 60,                                        # 60-64 upper inner lip, 62 fixed
    67, 66, 65,                                                # 65-67 lower inner lip, 66 fixed
)
# fmt: on

_TRAIN = ("afw", "helen/trainset", "lfpw/trainset")
_COMMON = ("helen/testset", "lfpw/testset")
_CHALLENGING = ("ibug",)
SPLITS = {
    "train": _TRAIN,
    "common": _COMMON,
    "challenging": _CHALLENGING,
    "full": _COMMON + _CHALLENGING,
    "test": ("300W/01_Indoor", "300W/02_Outdoor"),
}
LAYOUT_SPLITS = ("train", "common", "challenging", "full")  # what layout_problems checks; "test" is optional
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class _Stop(Exception):
    """A .pts file whose structure is broken at one line: nothing after it can be read."""


def _header(path: Path, lineno: int, line: str, key: str) -> str:
    """The value of a "key: value" header line; _Stop when the line is anything else."""
    k, sep, value = line.partition(":")
    if not sep or k.strip().lower() != key or not value.strip():
        raise _Stop(f'{path}:{lineno}: expected "{key}: <number>" header, got "{line}"')
    return value.strip()


def parse_pts(path: Path, num_landmarks: int = NUM_LANDMARKS) -> tuple[np.ndarray | None, np.ndarray, list[str]]:
    """A .pts file -> ((K, 2) float64 (x, y) 0-based pixels (the file's 1-based values - 1), (K,) the
    1-based line of each point, problems). Every bad point line is reported, `file:line: what`; a
    broken header or bracket stops the parse there. The array is None when there is any problem.

    Tolerates CRLF, a UTF-8 BOM, whitespace around every line and blank lines (skipped; line
    numbers in errors count them).
    """
    path = Path(path)
    try:
        all_lines = read_text_lines(path, ".pts file")
    except DatasetFormatError as e:
        return None, np.zeros(0, int), [str(e)]
    lines = [(i, s.strip()) for i, s in enumerate(all_lines, start=1) if s.strip()]
    end = len(all_lines) + 1  # the "line" after the last, for errors about a file that ends early

    def at(j: int) -> tuple[int, str | None]:
        return lines[j] if j < len(lines) else (end, None)

    out = np.empty((num_landmarks, 2), dtype=np.float64)
    where = np.zeros(num_landmarks, dtype=int)
    problems = []
    try:
        lineno, line = at(0)
        if line is None:
            raise _Stop(f"{path}: empty .pts file")
        version = _header(path, lineno, line, "version")
        try:
            float(version)
        except ValueError:
            raise _Stop(f'{path}:{lineno}: expected "version: <number>" header, got "{line}"') from None

        lineno, line = at(1)
        if line is None:
            raise _Stop(f'{path}:{lineno}: file ends before the "n_points: {num_landmarks}" header')
        n = _header(path, lineno, line, "n_points")
        if not n.isdigit():
            raise _Stop(f'{path}:{lineno}: expected "n_points: <integer>" header, got "{line}"')
        if int(n) != num_landmarks:
            raise _Stop(f"{path}:{lineno}: n_points is {int(n)}, expected {num_landmarks}")

        lineno, line = at(2)
        if line != "{":
            got = "the end of the file" if line is None else f'"{line}"'
            raise _Stop(f'{path}:{lineno}: expected "{{" opening the points, got {got}')

        for k in range(num_landmarks):
            lineno, line = at(3 + k)
            if line is None or line == "}":
                raise _Stop(f"{path}:{lineno}: too few points, found {k}, expected {num_landmarks}")
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                xy = [float(p) for p in parts]
                if not all(math.isfinite(v) for v in xy):
                    raise ValueError
            except ValueError:
                problems.append(f'{path}:{lineno}: expected "x y" numbers, got "{line}"')
                continue
            out[k], where[k] = xy, lineno

        lineno, line = at(3 + num_landmarks)
        if line != "}":
            got = "the end of the file" if line is None else f'"{line}"'
            raise _Stop(f'{path}:{lineno}: expected "}}" after {num_landmarks} points, got {got}')
        if len(lines) > 4 + num_landmarks:
            lineno, line = lines[4 + num_landmarks]
            raise _Stop(f'{path}:{lineno}: unexpected text after the closing "}}": "{line}"')
    except _Stop as e:
        problems.append(str(e))
    if not problems and num_landmarks > 1 and np.ptp(out, axis=0).max() == 0.0:
        problems.append(f"{path}: all {num_landmarks} points coincide, no face box")
    if problems:
        return None, where, problems
    return out - 1.0, where, []  # 1-based (Matlab) -> 0-based pixel centres


def read_pts(path: Path, num_landmarks: int = NUM_LANDMARKS) -> np.ndarray:
    """parse_pts's points -> (K, 2) float64 0-based pixels; DatasetFormatError naming the first problem."""
    xy, _, problems = parse_pts(path, num_landmarks)
    raise_problems(problems)
    return xy


def _folder_images(folder: Path) -> tuple[list[Path], list[str]]:
    """The images of one folder, sorted by stem; and a problem per stem that two images share."""
    by_stem: dict[str, Path] = {}
    problems = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if p.stem in by_stem:
                problems.append(f"{p}: two images share the stem {p.stem!r} (also {by_stem[p.stem].name})")
            else:
                by_stem[p.stem] = p
    return [by_stem[s] for s in sorted(by_stem)], problems


def _check_split(split: str) -> tuple[str, ...]:
    try:
        return SPLITS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}") from None


def face_box(landmarks: np.ndarray, crop_scale: float) -> tuple[float, float, float, float]:
    """Square (x0, y0, x1, y1) centred on the landmarks' bounding box, side crop_scale × its longer side."""
    lo, hi = np.nanmin(landmarks, axis=0), np.nanmax(landmarks, axis=0)
    cx, cy = (lo + hi) / 2.0
    half = crop_scale * float(max(hi - lo)) / 2.0
    return (float(cx - half), float(cy - half), float(cx + half), float(cy + half))


def load_split(root: Path, split: str, num_landmarks: int = NUM_LANDMARKS, crop_scale: float = 1.25) -> list[Record]:
    """All records of a split, sorted by (folder, stem); id = "<folder>/<stem>". Decodes no image.

    spacing_mm is NaN (faces have no physical scale; use NME with IOD_PAIR). crop: see face_box.
    """
    folders = _check_split(split)
    if num_landmarks < 1:
        raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
    if not crop_scale > 0:
        raise ValueError(f"crop_scale must be > 0, got {crop_scale}")
    root = Path(root)
    records = []
    for folder in sorted(folders):
        d = root / folder
        if not d.is_dir():
            raise DatasetFormatError(f"{d}: image folder of split {split!r} not found")
        images, problems = _folder_images(d)
        raise_problems(problems)
        if not images:
            raise DatasetFormatError(f"{d}: no .jpg/.jpeg/.png images in a folder of split {split!r}")
        for image_path in images:
            pts = image_path.with_suffix(".pts")
            if not pts.is_file():
                raise DatasetFormatError(f"{pts}: .pts file not found (needed for image {image_path})")
            xy = read_pts(pts, num_landmarks)
            records.append(
                Record(
                    id=f"{folder}/{image_path.stem}",
                    image_path=image_path,
                    landmarks=xy,
                    spacing_mm=float("nan"),
                    crop=face_box(xy, crop_scale),
                )
            )
    return records


def _missing_folder_problems(root: Path, splits: tuple[str, ...]) -> list[str]:
    affected: dict[str, list[str]] = {}
    for split in splits:
        for folder in SPLITS[split]:
            affected.setdefault(folder, []).append(split)
    problems = []
    for folder, names in affected.items():
        if not (root / folder).is_dir():
            problems.append(f"{root / folder}: folder missing (affects split {', '.join(map(repr, names))})")
    return problems


def split_problems(root: Path, split: str) -> list[str]:
    """Problems stopping one split from loading (missing folders), cheap; [] when it looks fine."""
    _check_split(split)
    root = Path(root)
    return root_problems(root) or _missing_folder_problems(root, (split,))


def layout_problems(root: Path) -> list[str]:
    """Human-readable problems with the layout of train/common/challenging (and so full); [] when fine.

    Cheap (existence checks only, nothing parsed or decoded). The private test set is optional:
    ask split_problems(root, "test") for it.
    """
    root = Path(root)
    return root_problems(root) or _missing_folder_problems(root, LAYOUT_SPLITS)


def check(root: Path, num_landmarks: int = NUM_LANDMARKS, cache_dir: Path | None = None) -> list[str]:
    """Every problem with the dataset, `file:line: what`: the layout (train/common/challenging), then
    every folder of every split that exists, the private test set included: each image's header
    (through the header cache in cache_dir, see checks.py) and its .pts parsed in full. Points
    outside their image are no problem: the last entry is then one Problem.NOTE counting them."""
    root = Path(root)
    problems = layout_problems(root)
    if root_problems(root):
        return problems
    off_image, off_files = [], 0  # `file:line: landmark k at (x, y) is outside ...`, and in how many .pts files
    folders = sorted({f for fs in SPLITS.values() for f in fs})
    with ImageHeaders(cache_dir) as headers:
        for folder in folders:
            if not (root / folder).is_dir():
                continue  # layout_problems said so, or it is the optional test set
            images, bad = _folder_images(root / folder)
            problems += bad
            if not images:
                problems.append(f"{root / folder}: no .jpg/.jpeg/.png images")
            for image in images:
                try:
                    info = headers.read(image)
                except DatasetFormatError as e:
                    problems.append(str(e))
                    info = None
                pts = image.with_suffix(".pts")
                if not pts.is_file():
                    problems.append(f"{pts}: .pts file not found (needed for image {image})")
                    continue
                xy, where, bad = parsed_once(pts, parse_pts, num_landmarks)
                problems += bad
                if xy is not None and info is not None and (ks := outside(xy, info)):
                    off_image += [
                        f"{pts}:{where[k]}: {outside_message(k, xy[k] + 1, info, image)}" for k in ks
                    ]  # shown 1-based, as in the file
                    off_files += 1
    return problems + outside_note(root, off_image, off_files, num_landmarks)


def _describe(root: Path):
    for split in SPLITS:
        if split_problems(root, split):
            yield f"{split}: missing ({'; '.join(split_problems(root, split))})"
        else:
            yield f"{split}: {len(load_split(root, split))} faces"


if __name__ == "__main__":
    check_folder_cli("face300w", check, _describe)
