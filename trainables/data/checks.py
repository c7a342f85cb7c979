"""Data files checked for real before any trial: image headers (cached per file) and landmark bounds.

One code path serves the checker CLIs (`python -m trainables.data.<dataset> ROOT`) and spec
validation (`trainables.data.problems`): each dataset's `check(root, ...)` parses every annotation
and reads every image's header through `ImageHeaders`, and returns every problem at once, one
line each, `file:line: what` (or `file: what` when the problem has no line).

    with ImageHeaders(default_cache_dir()) as headers:
        info = headers.read(path)     # ImageInfo(format="BMP", width=1935, height=2400, mode="L")
                                      # or DatasetFormatError("<path>: truncated: ...")
    outside(xy, info)                 # [k, ...]: the landmarks off the image

A landmark off its image is an annotation error in a radiograph (ISBI 2015, hand): a problem,
`outside_message`. In a face photo it is normal (a jaw or brow the photo's border cuts): the face
datasets report such points in one Problem.NOTE, `outside_note`, and use them.

What is read of an image: the header, plus what finding a truncated file takes, never a full decode:
  BMP (uncompressed rows): the header; the file must be as long as the rows it announces.
  PNG: verify(): every chunk is read and its CRC checked; nothing is decompressed.
  JPEG: a decode at 1/8 scale (libjpeg's DCT scaling), which still reads the whole coded stream.
  Anything else Pillow opens: verify().
An image over Image.MAX_IMAGE_PIXELS is refused as a possible decompression bomb, and so is a mode
with more than 8 bits per channel (read_image would clip it to white).

The cache: <cache_dir>/image_headers.json maps each file's absolute path to [size, mtime_ns,
header or problem], so a second check of 400 ISBI images opens none of them. A file rewritten in
place with the same size within the filesystem's mtime granularity (a few ms) would be missed;
delete the cache file to force a full check. The cache is rewritten atomically under a lock, and
entries of files that are gone or changed are dropped then. It is also kept in memory per process,
because spec validation checks the same data once per searched value; annotations are parsed
once per process and file version too (parsed_once), not cached on disk.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from trainables.data.cache import locked, write_atomic
from trainables.problems import Problem

CACHE_FILE = "image_headers.json"
CACHE_VERSION = 1  # bump when _judge decides differently, so cached verdicts are not reused


class DatasetFormatError(ValueError):
    """The dataset on disk does not match the expected layout or file format.

    The message names the offending file (`file:line: what`, or `file: what`). `problems` holds
    every problem found; the message is the first, plus how many more there are.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


def raise_problems(problems: list[str]) -> None:
    """Raise DatasetFormatError for a non-empty list of problems (its message: the first one)."""
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DatasetFormatError(problems[0] + more, problems)


@dataclass(frozen=True)
class ImageInfo:
    format: str  # Pillow's name: "BMP", "PNG", "JPEG", ...
    width: int
    height: int
    mode: str  # Pillow's mode: "L", "P", "RGB", ...


class _Bad(Exception):
    """What is wrong with an image file, without its path (the cache stores this text)."""


def image_header(path: Path) -> ImageInfo:
    """The header of one image file, checked as the module docstring says; DatasetFormatError naming the file."""
    try:
        return _judge(Path(path))
    except _Bad as e:
        raise DatasetFormatError(f"{path}: {e}") from None


def _judge(path: Path) -> ImageInfo:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _Bad("image file not found") from None
    except OSError as e:
        raise _Bad(f"cannot read ({e.strerror})") from None
    if size == 0:
        raise _Bad("empty file (0 bytes), not an image")
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by name
            with Image.open(path) as im:
                fmt = im.format or fmt
                info = ImageInfo(fmt, im.width, im.height, im.mode)
                _refuse_header(info)
                _read_to_end(im, size)
    except _Bad:
        raise
    except Image.DecompressionBombError as e:  # over 2 × MAX_IMAGE_PIXELS: Pillow refuses before we see the size
        m = re.search(r"\((\d+) pixels\)", str(e))
        raise _Bad(_bomb(int(m.group(1))) if m else f"refused as a possible decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        with open(path, "rb") as f:
            head = f.read(12)
        raise _Bad(f"not an image (Pillow does not recognise the format; the file starts with {head!r})") from None
    except Exception as e:  # noqa: BLE001 — Pillow's plugins raise OSError, SyntaxError, struct.error, ... on bad data
        raise _Bad(f"truncated or corrupt {fmt} ({type(e).__name__}: {e})") from None
    return info


def _bomb(pixels: int) -> str:
    return (
        f"header claims {pixels} pixels, over Pillow's limit of {Image.MAX_IMAGE_PIXELS} "
        "(Image.MAX_IMAGE_PIXELS); refused as a possible decompression bomb"
    )


def _refuse_header(info: ImageInfo) -> None:
    if info.width < 1 or info.height < 1:
        raise _Bad(f"header claims {info.width}×{info.height} pixels, an image with no pixels")
    if Image.MAX_IMAGE_PIXELS and info.width * info.height > Image.MAX_IMAGE_PIXELS:
        raise _Bad(_bomb(info.width * info.height))
    if info.mode in ("I", "F") or info.mode.startswith("I;"):
        raise _Bad(
            f"mode {info.mode} has more than 8 bits per pixel; expected an 8-bit grayscale, RGB or "
            "palette image (convert it to 8 bits)"
        )


def _read_to_end(im: Image.Image, size: int) -> None:
    """Find a truncated file without a full decode (see the module docstring)."""
    if im.format == "BMP" and len(im.tile) == 1 and im.tile[0][0] == "raw":
        _, extents, offset, args = im.tile[0][:4]
        stride, rows = args[1], extents[3] - extents[1]  # raw BMP args: (rawmode, bytes per row, direction)
        need = offset + stride * rows
        if size < need:
            raise _Bad(f"truncated: the BMP header announces {need} bytes, the file has {size}")
    elif im.format == "BMP":  # run-length encoded: only decoding finds where the data ends
        im.load()
    elif im.format == "JPEG":
        im.draft("L", (1, 1))  # the smallest scale libjpeg offers: 1/8
        im.load()
    else:
        im.verify()


class ImageHeaders:
    """`image_header` through the per-file cache described in the module docstring.

    with ImageHeaders(cache_dir) as headers:    # cache_dir None: the in-process cache only
        headers.read(path)                      # ImageInfo, or DatasetFormatError naming path
    # leaving the block writes the new entries to <cache_dir>/image_headers.json
    """

    # absolute path -> [size, mtime_ns, ImageInfo fields or the problem text], for the settings below
    _memo: dict[str, list] = {}
    _memo_settings: list | None = None

    def __init__(self, cache_dir: Path | None):
        self.file = None if cache_dir is None else Path(cache_dir).expanduser() / CACHE_FILE
        self._disk: dict[str, list] | None = None  # read on the first miss
        self._new: dict[str, list] = {}
        self.opened = 0  # image files read by this instance (a cache miss each); tests look at it
        if ImageHeaders._memo_settings != _settings():
            ImageHeaders._memo, ImageHeaders._memo_settings = {}, _settings()

    def __enter__(self) -> ImageHeaders:
        return self

    def __exit__(self, *exc) -> None:
        self.save()

    def read(self, path: Path) -> ImageInfo:
        key = os.path.abspath(path)
        try:
            st = os.stat(key)
        except OSError:
            return image_header(path)  # not found / unreadable: say so, cache nothing
        stamp = [st.st_size, st.st_mtime_ns]
        entry = self._memo.get(key)
        if entry is None or entry[:2] != stamp:
            entry = self._on_disk(key, stamp)
        if entry is None:
            self.opened += 1
            try:
                verdict = asdict(_judge(Path(key)))
            except _Bad as e:
                verdict = str(e)
            entry = self._new[key] = [*stamp, verdict]
        self._memo[key] = entry
        if isinstance(entry[2], str):
            raise DatasetFormatError(f"{path}: {entry[2]}")
        return ImageInfo(**entry[2])

    def _on_disk(self, key: str, stamp: list) -> list | None:
        if self._disk is None:
            self._disk = _load(self.file) if self.file else {}
        entry = self._disk.get(key)
        return entry if entry is not None and entry[:2] == stamp else None

    def save(self) -> None:
        """Merge this check's new entries into the cache file (atomic, under a lock)."""
        if self.file is None or not self._new:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with locked(self.file.with_suffix(".lock")):
                entries = {**_load(self.file), **self._new}  # another process may have added some meanwhile
                entries = {p: e for p, e in entries.items() if _unchanged(p, e)}
                text = json.dumps({"settings": _settings(), "files": entries}, separators=(",", ":"))
                write_atomic(self.file, lambda f: f.write(text.encode()))
        except OSError as e:  # a cache that cannot be written costs time on the next check, nothing else
            warnings.warn(f"{self.file}: image-header cache not written ({e})", RuntimeWarning, stacklevel=2)
        self._new = {}


def _settings() -> list:
    """What a cached verdict depends on besides the file: this code, Pillow, and the bomb limit."""
    return [CACHE_VERSION, PIL.__version__, Image.MAX_IMAGE_PIXELS]


def _load(file: Path) -> dict[str, list]:
    """The cache file's entries; {} when absent, unreadable, or written under other settings."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(file.read_bytes())
        if isinstance(data, dict) and data.get("settings") == _settings() and isinstance(data.get("files"), dict):
            return data["files"]
    return {}


def _unchanged(path: str, entry: list) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return [st.st_size, st.st_mtime_ns] == entry[:2]


_parsed: dict[tuple, object] = {}


def parsed_once(path: Path, parse, *args):
    """parse(path, *args), remembered in this process per file version (absolute path, size, mtime_ns).

    Spec validation checks the same data once per searched value; annotations are parsed once.
    The result is shared: callers must not modify it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return parse(path, *args)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, parse, args)
    if key not in _parsed:
        _parsed[key] = parse(path, *args)
    return _parsed[key]


def outside(xy: np.ndarray, info: ImageInfo) -> list[int]:
    """The 0-based indices of the (x, y) rows (pixel centres at integers) that lie off the image,
    whose pixels cover [-0.5, W - 0.5] × [-0.5, H - 0.5]. A NaN row (not annotated) is not off it."""
    right, bottom = info.width - 0.5, info.height - 0.5
    return [
        k
        for k, (x, y) in enumerate(xy.tolist())  # plain floats: ~20 landmarks, numpy's overhead would dominate
        if not (math.isnan(x) or math.isnan(y)) and not (-0.5 <= x <= right and -0.5 <= y <= bottom)
    ]


def outside_message(k: int, shown: tuple[float, float], info: ImageInfo, image: Path) -> str:
    """'landmark 3 at (5000, 5000) is outside the 194×240 (W×H) image 002.bmp', k 0-based, shown as in the file."""
    return f"landmark {k + 1} at ({shown[0]:g}, {shown[1]:g}) is outside the {info.width}×{info.height} (W×H) image {Path(image).name}"


def outside_note(root: Path, found: list[str], files: int, num_landmarks: int) -> list[Problem]:
    """The landmarks a face dataset keeps although they lie off their image, as one Problem.NOTE
    (or [] when there are none): `found` holds one `file:line: outside_message` line each, from
    `files` annotation files; the first is shown as the example."""
    if not found:
        return []
    n, s_n, s_f = len(found), "s" if len(found) > 1 else "", "s" if files > 1 else ""
    return [
        Problem(
            str(root),
            f"{n} landmark{s_n} in {files} annotation file{s_f} lie{'' if s_n else 's'} outside "
            f"their image (faces cut by the photo's border), e.g. {found[0]}; kept: the face crop pads the "
            f"image, a target that misses the heatmap adds no loss, and NME scores all {num_landmarks} points",
            Problem.NOTE,
        )
    ]
