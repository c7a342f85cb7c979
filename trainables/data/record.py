"""What every dataset loader yields: one Record per image, plus the shared image reader.

    rec = Record(id="001", image_path=Path("001.bmp"), landmarks=np.zeros((19, 2)), spacing_mm=0.1)
    read_image(rec.image_path)     # (H, W) uint8 grayscale, decoded on demand

Landmarks are float (x, y) in pixels of the full-size image, pixel centres at integers (the
convention of trainables/heatmaps.py). A landmark that is not annotated is a NaN row: it is
left out of the loss and of every metric.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.data.cache import default_cache_dir
from trainables.data.checks import DatasetFormatError, image_header, raise_problems  # noqa: F401 (re-exported)
from trainables.problems import Problem


@dataclass(frozen=True)
class Record:
    id: str  # the image file name without extension, e.g. "001"
    image_path: Path
    landmarks: np.ndarray  # (K, 2) float64, (x, y) in pixels of the full-size image; NaN row = missing
    spacing_mm: float  # mm per pixel of the full-size image; NaN when the dataset has no physical scale (faces)
    crop: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) the network sees; None = whole image


def read_image(path: Path) -> np.ndarray:
    """Decode an image file (BMP, PNG, JPEG; 8-bit, RGB or palette) -> (H, W) uint8 grayscale.

    The file is first checked as the data checker checks it (checks.image_header), so a bad file
    raises the checker's one-line DatasetFormatError, never a raw Pillow exception.
    """
    path = Path(path)
    image_header(path)
    try:
        with Image.open(path) as im:
            gray = im.convert("L")  # RGB -> ITU-R 601 luma; palette images go through their palette
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise DatasetFormatError(f"{path}: cannot decode image ({e})") from None
    return np.array(gray, dtype=np.uint8)


def root_problems(root: Path) -> list[str]:
    """[] when a dataset root is an existing folder, else the one problem (every loader's first check)."""
    if not root.exists():
        return [Problem(str(root), "dataset root does not exist", Problem.MISSING)]
    if not root.is_dir():
        return [f"{root}: dataset root is not a folder"]
    return []


def read_text_lines(path: Path, what: str) -> list[str]:
    """A text file's lines (UTF-8, a BOM ignored; \n, \r\n or \r); `what` names the file in errors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: {what} not found") from None
    except OSError as e:
        raise DatasetFormatError(f"{path}: cannot read {what} ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetFormatError(
            f"{path}: not a text file (byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8)"
        ) from None
    if "\0" in text:  # valid UTF-8, yet binary
        raise DatasetFormatError(f"{path}: not a text file (a NUL byte at offset {text.index(chr(0))})") from None
    return text.splitlines()


def check_folder_cli(module: str, check: Callable[..., list[str]], describe: Callable[[Path], Iterable[str]]) -> None:
    """`python -m trainables.data.<module> ROOT`: every problem, one line each, and exit 2; else one line per split.

    `check(root, cache_dir=...)` is the dataset's full check, the one spec validation runs. Its
    notes (Problem.NOTE, e.g. faces cut by the photo's border) print as `note: ...` on stderr and
    fail nothing.
    """
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m trainables.data.{module} ROOT")
    root = Path(sys.argv[1])
    found = check(root, cache_dir=default_cache_dir())
    problems = [p for p in found if Problem.of(p).kind != Problem.NOTE]
    for note in found:
        if Problem.of(note).kind == Problem.NOTE:
            print(f"note: {note}", file=sys.stderr)
    if not problems:
        try:
            lines = list(describe(root))
        except DatasetFormatError as e:  # something the check does not look at; still one line per problem
            problems = e.problems
    if problems:
        for p in problems:
            print(p)
        print(f"{root}: {len(problems)} problem{'s' if len(problems) > 1 else ''}", file=sys.stderr)
        sys.exit(2)
    for line in lines:
        print(line)
