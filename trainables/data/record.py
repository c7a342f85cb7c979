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

from trainables.problems import Problem


class DatasetFormatError(ValueError):
    """The dataset on disk does not match the expected layout or file format.

    The message names the offending file (and the 1-based line number where relevant).
    """


@dataclass(frozen=True)
class Record:
    id: str  # the image file name without extension, e.g. "001"
    image_path: Path
    landmarks: np.ndarray  # (K, 2) float64, (x, y) in pixels of the full-size image; NaN row = missing
    spacing_mm: float  # mm per pixel of the full-size image; NaN when the dataset has no physical scale (faces)
    crop: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) the network sees; None = whole image


def read_image(path: Path) -> np.ndarray:
    """Decode an image file (BMP, PNG, JPEG; 8-bit, RGB or palette) -> (H, W) uint8 grayscale."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            gray = im.convert("L")  # RGB -> ITU-R 601 luma; palette images go through their palette
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: image file not found") from None
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
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path}: not a text file ({e})") from None
    except OSError as e:
        raise DatasetFormatError(f"{path}: cannot read {what} ({e})") from None
    return text.splitlines()


def check_folder_cli(module: str, layout_problems: Callable[[Path], list[str]],
                     describe: Callable[[Path], Iterable[str]]) -> None:
    """`python -m trainables.data.<module> ROOT`: print the layout problems and exit 1, or one line per split."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m trainables.data.{module} ROOT")
    root = Path(sys.argv[1])
    problems = layout_problems(root)
    for p in problems:
        print("problem:", p)
    if problems:
        sys.exit(1)
    for line in describe(root):
        print(line)
