"""Every bad data file stopped at the door (issue 15): the dataset checks on fixtures in the real formats.

Each case writes a small, valid dataset (ISBI 2015, hand atlas or 300-W) into tmp_path, breaks one
file the way a user's copy breaks (truncated, empty, text, decompression bomb, wrong landmark
count, garbage, binary, off the image), and asserts the exact `file:line: what` lines of the check
that spec validation and `python -m trainables.data.<dataset> ROOT` share.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.config import TrialConfig
from trainables.data import checks, face300w, hand, isbi2015
from trainables.data import problems as data_problems
from trainables.data.record import DatasetFormatError, read_image
from trainables.problems import Problem

REPO = Path(__file__).resolve().parents[2]
BOMB = "refused as a possible decompression bomb"
LIMIT = f"over Pillow's limit of {Image.MAX_IMAGE_PIXELS} (Image.MAX_IMAGE_PIXELS)"


# --- fixtures in the real formats ---------------------------------------------------------------

ISBI_W, ISBI_H = 30, 24  # small 8-bit BMPs; the real ones are 1935×2400
ISBI_IDS = {"train": ["001", "002"], "test1": ["003"], "test2": ["004"]}


def isbi_lines(k: int = 19) -> list[str]:
    return [f"{i},{i % ISBI_H}" for i in range(k)]  # landmark i at (i, i): inside 30×24


def write_isbi_annotation(path: Path, lines: list[str]) -> None:
    path.write_bytes(("\r\n".join(lines + ["1", "2"]) + "\r\n").encode())  # CRLF and two label lines, as the real files


def make_isbi(root: Path) -> Path:
    for split, ids in ISBI_IDS.items():
        image_dir = root / "RawImage" / isbi2015.SPLIT_DIRS[split]
        image_dir.mkdir(parents=True)
        for rid in ids:
            Image.fromarray(np.full((ISBI_H, ISBI_W), int(rid) * 20, np.uint8)).save(image_dir / f"{rid}.bmp")
            for d in isbi2015.ANNOTATOR_DIRS.values():
                (root / "AnnotationsByMD" / d).mkdir(parents=True, exist_ok=True)
                write_isbi_annotation(root / "AnnotationsByMD" / d / f"{rid}.txt", isbi_lines())
    return root


HAND_K = 37


def hand_xy() -> np.ndarray:
    k = np.arange(HAND_K)
    return np.stack([k % 7 * 5.0 + 3, k // 7 * 6.0 + 4], axis=1)  # inside 40×40; ruler 0, 4 at (3, 4), (23, 4)


def hand_row(rid: str, cells: list[str] | None = None) -> str:
    return ",".join([rid] + (cells if cells is not None else [f"{v:g}" for v in hand_xy().ravel()]))


def make_hand(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    for rid in ("0001", "0002"):
        Image.fromarray(np.full((40, 40), 60, np.uint8)).save(root / "images" / f"{rid}.png")
    Image.new("RGB", (40, 40), (90, 90, 90)).save(root / "images" / "0003.jpg")
    (root / "all.csv").write_bytes(("\r\n".join(hand_row(r) for r in ("0001", "0002", "0003")) + "\r\n").encode())
    (root / "splits" / "set1.txt").write_text("0001\n0002\n")
    (root / "splits" / "set2.txt").write_text("0003\n")
    return root


FACE_W, FACE_H = 40, 36
FACE_FILES = {
    "afw": "a1.jpg",
    "helen/trainset": "h1.jpg",
    "lfpw/trainset": "l1.png",
    "helen/testset": "h2.jpg",
    "lfpw/testset": "l2.png",
    "ibug": "i1.jpg",
}


def face_lines() -> list[str]:
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    xy = np.stack([20 + 12 * np.cos(t), 18 + 10 * np.sin(t)], axis=1) + 1  # 1-based, as the files
    return ["version: 1", "n_points: 68", "{"] + [f"{x:.3f} {y:.3f}" for x, y in xy] + ["}"]


def write_pts(path: Path, lines: list[str]) -> None:
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())


def make_300w(root: Path) -> Path:
    for folder, name in FACE_FILES.items():
        (root / folder).mkdir(parents=True)
        image = root / folder / name
        Image.new("RGB", (FACE_W, FACE_H), (40, 80, 120)).save(image)
        write_pts(image.with_suffix(".pts"), face_lines())
    return root


# --- bad files, made the way they come -----------------------------------------------------------


def truncate(path: Path) -> int:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data)


def bmp_header(w: int, h: int) -> bytes:
    """A real 8-bit BMP header (and palette) claiming w×h pixels, without the pixel rows."""
    file_header = b"BM" + struct.pack("<IHHI", 54 + 1024, 0, 0, 54 + 1024)
    info_header = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 0, 0, 2835, 2835, 256, 0)
    return file_header + info_header + bytes(1024)


def png_header(w: int, h: int) -> bytes:
    """A real PNG (IHDR, an empty IDAT, IEND, valid CRCs) whose header claims w×h 8-bit gray pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


PNG_BYTES = png_header(4, 4)  # what a binary "annotation" looks like


# Each case: (dataset, name, break(root) -> the exact problem lines check() must return).


def isbi_image(root: Path, rid: str = "002") -> Path:
    return root / "RawImage" / "TrainingData" / f"{rid}.bmp"


def isbi_ann(root: Path, rid: str = "002", doctor: str = "400_senior") -> Path:
    return root / "AnnotationsByMD" / doctor / f"{rid}.txt"


def _isbi_truncated(root):
    p = isbi_image(root)
    size = truncate(p)
    return [f"{p}: truncated: the BMP header announces {size} bytes, the file has {size // 2}"]


def _isbi_zero_byte(root):
    isbi_image(root).write_bytes(b"")
    return [f"{isbi_image(root)}: empty file (0 bytes), not an image"]


def _isbi_text(root):
    isbi_image(root).write_text("<html>404 Not Found</html>\n")
    return [
        f"{isbi_image(root)}: not an image (Pillow does not recognise the format; the file starts with b'<html>404 No')"
    ]


def _isbi_bomb(root):
    isbi_image(root).write_bytes(bmp_header(100_000, 100_000))  # Pillow itself refuses this one (> 2 × the limit)
    return [f"{isbi_image(root)}: header claims 10000000000 pixels, {LIMIT}; {BOMB}"]


def _isbi_bomb_under_twice_the_limit(root):
    isbi_image(root).write_bytes(bmp_header(10_000, 10_000))  # Pillow only warns about this one; we refuse it
    return [f"{isbi_image(root)}: header claims 100000000 pixels, {LIMIT}; {BOMB}"]


def _isbi_18_landmarks(root):
    write_isbi_annotation(isbi_ann(root), isbi_lines(18))
    return [f'{isbi_ann(root)}: found 18 "x,y" landmark lines, expected 19']


def _isbi_12_lines(root):
    isbi_ann(root).write_bytes(("\r\n".join(isbi_lines(12)) + "\r\n").encode())
    return [f'{isbi_ann(root)}: found 12 "x,y" landmark lines, expected 19']


def _isbi_garbage_line(root):
    lines = isbi_lines()
    lines[5], lines[9] = "12O4,880", "12;14"
    write_isbi_annotation(isbi_ann(root), lines)
    return [
        f'{isbi_ann(root)}:6: expected "x,y" numbers, got "12O4,880"',
        f'{isbi_ann(root)}:10: expected "x,y" numbers, got "12;14"',
    ]


def _isbi_binary(root):
    isbi_ann(root).write_bytes(PNG_BYTES)
    return [f"{isbi_ann(root)}: not a text file (byte 0x89 at offset 0 is not UTF-8)"]


def _isbi_nul(root):
    isbi_ann(root).write_bytes(b"1,2\r\n\x00\x00\x00\x00")
    return [f"{isbi_ann(root)}: not a text file (a NUL byte at offset 5)"]


def _isbi_out_of_image(root):
    lines = isbi_lines()
    lines[2] = "5000,5000"
    write_isbi_annotation(isbi_ann(root, doctor="400_junior"), lines)
    return [
        f"{isbi_ann(root, doctor='400_junior')}:3: landmark 3 at (5000, 5000) is outside the 30×24 (W×H) image 002.bmp"
    ]


def _isbi_negative(root):
    lines = isbi_lines()
    lines[0], lines[18] = "-3,10", "29.4,-0.6"  # x -0.5 is the image's left edge; -0.6 is past the top one
    write_isbi_annotation(isbi_ann(root), lines)
    return [
        f"{isbi_ann(root)}:1: landmark 1 at (-3, 10) is outside the 30×24 (W×H) image 002.bmp",
        f"{isbi_ann(root)}:19: landmark 19 at (29.4, -0.6) is outside the 30×24 (W×H) image 002.bmp",
    ]


def _isbi_missing_annotation(root):
    isbi_ann(root, "004").unlink()
    return [f"{root / 'AnnotationsByMD' / '400_senior'}: 1 annotation files missing for split 'test2' (004.txt)"]


def hand_image(root: Path, rid: str = "0002") -> Path:
    return root / "images" / f"{rid}.png"


def _hand_rewrite_csv(root, line2: str) -> Path:
    csv = root / "all.csv"
    csv.write_bytes(("\r\n".join([hand_row("0001"), line2, hand_row("0003")]) + "\r\n").encode())
    return csv


def _hand_truncated_png(root):
    truncate(hand_image(root))
    return [f"{hand_image(root)}: truncated or corrupt PNG (OSError: Truncated File Read)"]


def _hand_zero_byte(root):
    hand_image(root).write_bytes(b"")
    return [f"{hand_image(root)}: empty file (0 bytes), not an image"]


def _hand_text(root):
    hand_image(root).write_text("not an image")
    return [
        f"{hand_image(root)}: not an image (Pillow does not recognise the format; the file starts with b'not an image')"
    ]


def _hand_bomb(root):
    hand_image(root).write_bytes(png_header(100_000, 100_000))
    return [f"{hand_image(root)}: header claims 10000000000 pixels, {LIMIT}; {BOMB}"]


def _hand_16_bit(root):
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(hand_image(root))  # read_image would clip it to white
    return [
        f"{hand_image(root)}: mode I;16 has more than 8 bits per pixel; expected an 8-bit grayscale, RGB or "
        "palette image (convert it to 8 bits)"
    ]


def _hand_36_landmarks(root):
    csv = _hand_rewrite_csv(root, hand_row("0002", [f"{v:g}" for v in hand_xy()[:36].ravel()]))
    return [f"{csv}:2: expected 75 columns (id + 37 x,y pairs), found 73"]


def _hand_garbage(root):
    cells = [f"{v:g}" for v in hand_xy().ravel()]
    cells[4], cells[9] = "12O", ""
    csv = _hand_rewrite_csv(root, hand_row("0002", cells))
    return [
        f'{csv}:2: column 6: expected a number or nan, got "12O"',
        f'{csv}:2: column 11: expected a number or nan, got ""',
    ]


def _hand_binary(root):
    (root / "all.csv").write_bytes(PNG_BYTES)
    splits = root / "splits"
    return [
        f"{root / 'all.csv'}: not a text file (byte 0x89 at offset 0 is not UTF-8)",
        f"{splits / 'set1.txt'}:1: id '0001' is not in {root / 'all.csv'}",
        f"{splits / 'set1.txt'}:2: id '0002' is not in {root / 'all.csv'}",
        f"{splits / 'set2.txt'}:1: id '0003' is not in {root / 'all.csv'}",
    ]


def _hand_out_of_image(root):
    cells = [f"{v:g}" for v in hand_xy().ravel()]
    cells[2 * 6], cells[2 * 6 + 1] = "5000", "5000"
    csv = _hand_rewrite_csv(root, hand_row("0002", cells))
    return [f"{csv}:2: id '0002': landmark 7 at (5000, 5000) is outside the 40×40 (W×H) image 0002.png"]


def _hand_negative(root):
    cells = [f"{v:g}" for v in hand_xy().ravel()]
    cells[2 * 36] = "-7"
    csv = _hand_rewrite_csv(root, hand_row("0002", cells))
    return [f"{csv}:2: id '0002': landmark 37 at (-7, 34) is outside the 40×40 (W×H) image 0002.png"]


def _hand_missing_image(root):
    hand_image(root).unlink()
    return [
        f"{hand_image(root)}: image of id '0002' not found (also tried .jpg, .jpeg and any other suffix; "
        f"id listed at {root / 'all.csv'}:2)"
    ]


def face_image(root: Path, folder: str = "ibug") -> Path:
    return root / folder / FACE_FILES[folder]


def _face_rewrite(root, edit) -> Path:
    lines = face_lines()
    edit(lines)
    pts = face_image(root).with_suffix(".pts")
    write_pts(pts, lines)
    return pts


def _face_truncated_jpeg(root):
    img = face_image(root)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (FACE_H, FACE_W, 3), np.uint8)).save(img)
    truncate(img)
    return [f"{img}: truncated or corrupt JPEG (OSError: image file is truncated"]  # + Pillow's byte count: a prefix


def _face_zero_byte(root):
    face_image(root).write_bytes(b"")
    return [f"{face_image(root)}: empty file (0 bytes), not an image"]


def _face_text(root):
    face_image(root).write_text("GIF? no.")
    return [
        f"{face_image(root)}: not an image (Pillow does not recognise the format; the file starts with b'GIF? no.')"
    ]


def _face_bomb(root):
    face_image(root, "lfpw/testset").write_bytes(png_header(100_000, 100_000))
    return [f"{face_image(root, 'lfpw/testset')}: header claims 10000000000 pixels, {LIMIT}; {BOMB}"]


def _face_67_points(root):
    pts = _face_rewrite(root, lambda ls: (ls.__setitem__(1, "n_points: 67"), ls.pop(3)))
    return [f"{pts}:2: n_points is 67, expected 68"]


def _face_too_few_points(root):
    pts = _face_rewrite(root, lambda ls: ls.pop(3))
    return [f"{pts}:71: too few points, found 67, expected 68"]


def _face_garbage(root):
    def edit(ls):
        ls[3 + 4], ls[3 + 50] = "12.O 4", "1,2"

    pts = _face_rewrite(root, edit)
    return [f'{pts}:8: expected "x y" numbers, got "12.O 4"', f'{pts}:54: expected "x y" numbers, got "1,2"']


def _face_binary(root):
    pts = face_image(root).with_suffix(".pts")
    pts.write_bytes(PNG_BYTES)
    return [f"{pts}: not a text file (byte 0x89 at offset 0 is not UTF-8)"]


def _face_missing_pts(root):
    pts = face_image(root).with_suffix(".pts")
    pts.unlink()
    return [f"{pts}: .pts file not found (needed for image {face_image(root)})"]


MAKERS = {"isbi2015": make_isbi, "hand": make_hand, "300w": make_300w}
CHECKS = {"isbi2015": isbi2015.check, "hand": hand.check, "300w": face300w.check}
CASES = [
    ("isbi2015", _isbi_truncated),
    ("isbi2015", _isbi_zero_byte),
    ("isbi2015", _isbi_text),
    ("isbi2015", _isbi_bomb),
    ("isbi2015", _isbi_bomb_under_twice_the_limit),
    ("isbi2015", _isbi_18_landmarks),
    ("isbi2015", _isbi_12_lines),
    ("isbi2015", _isbi_garbage_line),
    ("isbi2015", _isbi_binary),
    ("isbi2015", _isbi_nul),
    ("isbi2015", _isbi_out_of_image),
    ("isbi2015", _isbi_negative),
    ("isbi2015", _isbi_missing_annotation),
    ("hand", _hand_truncated_png),
    ("hand", _hand_zero_byte),
    ("hand", _hand_text),
    ("hand", _hand_bomb),
    ("hand", _hand_16_bit),
    ("hand", _hand_36_landmarks),
    ("hand", _hand_garbage),
    ("hand", _hand_binary),
    ("hand", _hand_out_of_image),
    ("hand", _hand_negative),
    ("hand", _hand_missing_image),
    ("300w", _face_truncated_jpeg),
    ("300w", _face_zero_byte),
    ("300w", _face_text),
    ("300w", _face_bomb),
    ("300w", _face_67_points),
    ("300w", _face_too_few_points),
    ("300w", _face_garbage),
    ("300w", _face_binary),
    ("300w", _face_missing_pts),  # a face point outside its image is no problem: see test_faces_cut_by_the_frame_...
]


def _matches(got: list[str], want: list[str]) -> bool:
    """Exact lines; a wanted line ending in "truncated" (Pillow's own text follows) is a prefix."""
    return len(got) == len(want) and all(
        g == w or (w.endswith("truncated") and g.startswith(w)) for g, w in zip(got, want)
    )


@pytest.mark.parametrize("dataset", MAKERS)
def test_a_good_dataset_has_no_problems(tmp_path, dataset):
    root = MAKERS[dataset](tmp_path / dataset)
    assert CHECKS[dataset](root, cache_dir=tmp_path / "cache") == []


@pytest.mark.parametrize("dataset, breaks", CASES, ids=[f"{d}-{f.__name__.lstrip('_')}" for d, f in CASES])
def test_each_bad_file_is_named_with_its_line_and_what(tmp_path, dataset, breaks):
    root = MAKERS[dataset](tmp_path / dataset)
    want = breaks(root)
    got = CHECKS[dataset](root, cache_dir=tmp_path / "cache")
    assert _matches(got, want), "\n".join(got)


def test_all_problems_at_once_in_file_order(tmp_path):
    root = make_isbi(tmp_path / "isbi")
    size = truncate(isbi_image(root, "001"))
    lines = isbi_lines()
    lines[5], lines[9] = "12O4,880", "12;14"
    write_isbi_annotation(isbi_ann(root, "002"), lines)
    lines = isbi_lines()
    lines[0], lines[18] = "-3,10", "29.4,-0.6"  # -0.5 is the image's top edge
    write_isbi_annotation(isbi_ann(root, "002", "400_junior"), lines)
    write_isbi_annotation(isbi_ann(root, "003", "400_junior"), isbi_lines(18))
    test2 = root / "RawImage" / "Test2Data" / "004.bmp"
    test2.write_bytes(b"")
    junior = isbi_ann(root, "002", "400_junior")
    assert isbi2015.check(root, cache_dir=tmp_path / "cache") == [  # image by image: its header, then its annotations
        f"{isbi_image(root, '001')}: truncated: the BMP header announces {size} bytes, the file has {size // 2}",
        f'{isbi_ann(root, "002")}:6: expected "x,y" numbers, got "12O4,880"',
        f'{isbi_ann(root, "002")}:10: expected "x,y" numbers, got "12;14"',
        f"{junior}:1: landmark 1 at (-3, 10) is outside the 30×24 (W×H) image 002.bmp",
        f"{junior}:19: landmark 19 at (29.4, -0.6) is outside the 30×24 (W×H) image 002.bmp",
        f'{isbi_ann(root, "003", "400_junior")}: found 18 "x,y" landmark lines, expected 19',
        f"{test2}: empty file (0 bytes), not an image",
    ]


# --- faces cut by the photo's border: a note, not a problem (issue 28) --------------------------------


KEPT = (
    "; kept: the face crop pads the image, a target that misses the heatmap adds no loss, and NME scores all 68 points"
)


def _faces_cut_by_the_frame(root: Path) -> list[str]:
    """The issue's face: a 232×185 photo whose landmark 48 (1-based, line 51) is at (233.493, 54.678), past
    the right edge 232.5 (1-based), and landmark 1 at (-2.5, 20) left of it; and one more point past the
    bottom of lfpw/testset's 40×36 image, y = 36.6 > 36.5. -> the `file:line: what` of each, in check order."""
    image = face_image(root)
    Image.new("RGB", (232, 185), (40, 80, 120)).save(image)
    lines = face_lines()
    lines[3 + 47], lines[3 + 0] = "233.493 54.678", "-2.5 20"
    write_pts(image.with_suffix(".pts"), lines)
    lfpw = face_image(root, "lfpw/testset").with_suffix(".pts")
    lines = face_lines()
    lines[3 + 9] = "20 36.6"
    write_pts(lfpw, lines)
    pts = image.with_suffix(".pts")
    return [
        f"{pts}:4: landmark 1 at (-2.5, 20) is outside the 232×185 (W×H) image i1.jpg",
        f"{pts}:51: landmark 48 at (233.493, 54.678) is outside the 232×185 (W×H) image i1.jpg",
        f"{lfpw}:13: landmark 10 at (20, 36.6) is outside the 40×36 (W×H) image l2.png",
    ]


def test_faces_cut_by_the_frame_are_one_note_not_problems(tmp_path):
    root = make_300w(tmp_path / "300w")
    first = _faces_cut_by_the_frame(root)[0]
    got = face300w.check(root, cache_dir=tmp_path / "cache")
    assert got == [
        f"{root}: 3 landmarks in 2 annotation files lie outside their image (faces cut by the photo's "
        f"border), e.g. {first}{KEPT}"
    ]
    assert Problem.of(got[0]).kind == Problem.NOTE


@pytest.mark.parametrize("dataset, off_image", [("isbi2015", _isbi_out_of_image), ("hand", _hand_out_of_image)])
def test_radiographs_keep_refusing_a_point_outside_the_image(tmp_path, dataset, off_image):
    # In a cephalogram or a hand radiograph a point off the image is an annotation error.
    root = MAKERS[dataset](tmp_path / dataset)
    want = off_image(root)
    got = CHECKS[dataset](root, cache_dir=tmp_path / "cache")
    assert got == want and all(Problem.of(p).kind == Problem.INVALID for p in data_problems(_data_cfg(dataset, root)))


def test_a_note_reaches_spec_validation_as_a_note_and_stops_no_trial(tmp_path):
    from trainables.registry import config_problems

    root = make_300w(tmp_path / "300w")
    first = _faces_cut_by_the_frame(root)[0]
    cfg = TrialConfig.from_dict(
        {
            "data": {
                "dataset": "300w",
                "root": str(root),
                "num_landmarks": 68,
                "train_split": "train",
                "val_split": "common",
            },
            "eval": {"split": ""},
        }
    )
    (note,) = data_problems(cfg.data)
    assert note.startswith(f"data.root: {root}: 3 landmarks in 2 annotation files") and first in note
    assert Problem.of(note).kind == Problem.NOTE
    notes: list = []
    assert config_problems(cfg) == [] and config_problems(cfg, notes) == [] and notes == [note]  # fit() starts


def test_a_note_is_never_cut_by_max_problems(tmp_path, monkeypatch):
    import trainables.data

    root = make_300w(tmp_path / "300w")
    _faces_cut_by_the_frame(root)
    _face_garbage(root)  # two problems in ibug's .pts: that file's points are not read, so no note from it
    monkeypatch.setattr(trainables.data, "MAX_PROBLEMS", 1)
    cfg = _data_cfg("300w", root)
    got = trainables.data.problems(cfg)
    assert len(got) == 3 and got[1].endswith(
        "… and 1 more problems; `python -m trainables.data.face300w ROOT` lists them all"
    )
    assert Problem.of(got[2]).kind == Problem.NOTE and "1 landmark in 1 annotation file lies outside" in got[2]


# --- the checker CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, dataset, breaks",
    [
        ("isbi2015", "isbi2015", lambda root: _isbi_bomb(root) + _isbi_garbage_line(root)),
        ("hand", "hand", lambda root: _hand_truncated_png(root) + _hand_garbage(root)),
        ("face300w", "300w", lambda root: _face_67_points(root) + _face_bomb(root)),
    ],
)
def test_checker_cli_exits_2_with_one_line_per_problem(tmp_path, module, dataset, breaks):
    root = MAKERS[dataset](tmp_path / dataset)
    breaks(root)
    want = CHECKS[dataset](root, cache_dir=None)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LANDMARK_STUDY_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, "-m", f"trainables.data.{module}", str(root)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stdout.splitlines() == want and len(want) >= 2
    assert "Traceback" not in run.stderr and f"{root}: {len(want)} problems" in run.stderr


def test_checker_cli_prints_a_note_and_exits_0(tmp_path):
    root = make_300w(tmp_path / "300w")
    first = _faces_cut_by_the_frame(root)[0]
    env = {**os.environ, "PYTHONPATH": str(REPO), "LANDMARK_STUDY_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, "-m", "trainables.data.face300w", str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # (stderr may also hold runpy's warning about running a module of an imported package)
    notes = [line for line in run.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [
        f"note: {root}: 3 landmarks in 2 annotation files lie outside their image (faces cut by the "
        f"photo's border), e.g. {first}{KEPT}"
    ]
    assert run.stdout.splitlines()[:3] == ["train: 3 faces", "common: 2 faces", "challenging: 1 faces"]


def test_checker_cli_on_a_good_dataset_prints_the_splits(tmp_path):
    root = make_isbi(tmp_path / "isbi")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LANDMARK_STUDY_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, "-m", "trainables.data.isbi2015", str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == [
        "train: 2 images (001..002)",
        "test1: 1 images (003..003)",
        "test2: 1 images (004..004)",
    ]


# --- spec validation gets the same problems, before any trial --------------------------------------


def _data_cfg(dataset: str, root: Path, **kw):
    defaults = {
        "isbi2015": {"num_landmarks": 19},
        "hand": {"num_landmarks": 37, "train_split": "set1", "val_split": "set2"},
        "300w": {"num_landmarks": 68, "train_split": "train", "val_split": "common"},
    }[dataset]
    return TrialConfig.from_dict({"data": {"dataset": dataset, "root": str(root), **defaults, **kw}}).data


@pytest.mark.parametrize(
    "dataset, breaks", [("isbi2015", _isbi_text), ("hand", _hand_out_of_image), ("300w", _face_garbage)]
)
def test_spec_validation_reports_the_check_lines_under_data_root(tmp_path, dataset, breaks):
    root = MAKERS[dataset](tmp_path / dataset)
    want = breaks(root)
    got = data_problems(_data_cfg(dataset, root))
    assert got == [f"data.root: {w}" for w in want]
    assert all(Problem.of(p).kind == Problem.INVALID for p in got)  # a dry run does not tolerate a bad file


def test_only_a_missing_root_is_missing(tmp_path):
    (p,) = data_problems(_data_cfg("isbi2015", tmp_path / "nowhere"))
    assert Problem.of(p).kind == Problem.MISSING


def test_isbi_num_landmarks_is_counted_in_every_file(tmp_path):
    root = make_isbi(tmp_path / "isbi")
    got = data_problems(_data_cfg("isbi2015", root, num_landmarks=20))
    assert len(got) == 8  # 4 images × 2 doctors
    assert got[0] == f'data.root: {isbi_ann(root, "001")}: found 19 "x,y" landmark lines, expected 20'
    assert data_problems(_data_cfg("isbi2015", root, num_landmarks=5)) == []  # the first 5 of 19 lines


def test_hand_ruler_problems_name_the_split(tmp_path):
    root = make_hand(tmp_path / "hand")
    cells = [f"{v:g}" for v in hand_xy().ravel()]
    cells[8] = "nan"  # x of landmark 5, a ruler end
    _hand_rewrite_csv(root, hand_row("0002", cells))
    got = data_problems(_data_cfg("hand", root, train_split="set1", val_split="set2"))
    assert got == [
        f"data.train_split: {root / 'all.csv'}:2: id '0002' lacks ruler landmark 5 (1-based), needed for "
        "its mm scale (ruler_mm / distance of landmarks 1 and 5)"
    ]


def test_phantom_on_disk_is_checked_as_isbi(tmp_path, tiny_phantom):
    from trainables.data import phantom

    cfg = TrialConfig.from_dict({"data": {"dataset": "phantom", "root": str(tmp_path / "ph"), "phantom": tiny_phantom}})
    root = phantom.ensure(tmp_path / "ph", cfg.data.phantom)
    assert data_problems(cfg.data) == []
    bad = root / "RawImage" / "Test1Data" / "009.bmp"
    truncate(bad)
    (p,) = data_problems(cfg.data)
    assert p.startswith(f"data.root: {bad}: truncated: the BMP header announces")


# --- the loaders say the same, if reached anyway ------------------------------------------------------


@pytest.mark.parametrize("breaks", [_isbi_truncated, _isbi_zero_byte, _isbi_text, _isbi_bomb])
def test_read_image_raises_the_checkers_line(tmp_path, breaks):
    root = make_isbi(tmp_path / "isbi")
    (want,) = breaks(root)
    with pytest.raises(DatasetFormatError) as e:
        read_image(isbi_image(root))
    assert str(e.value) == want


def test_load_split_raises_the_first_problem_and_keeps_them_all(tmp_path):
    root = make_isbi(tmp_path / "isbi")
    want = _isbi_garbage_line(root)
    with pytest.raises(DatasetFormatError) as e:
        isbi2015.load_split(root, "train", annotator="senior")
    assert str(e.value) == f"{want[0]} (and 1 more)" and e.value.problems == want


# --- the header cache -------------------------------------------------------------------------------


def test_second_check_reads_no_image_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    root = make_isbi(tmp_path / "isbi")
    want = _isbi_text(root)
    cache = tmp_path / "cache"
    assert isbi2015.check(root, cache_dir=cache) == want
    entries = json.loads((cache / checks.CACHE_FILE).read_text())["files"]
    images = sorted(str(p) for p in (root / "RawImage").rglob("*.bmp"))
    assert sorted(entries) == images  # absolute paths
    st = os.stat(isbi_image(root, "001"))
    assert entries[str(isbi_image(root, "001"))] == [
        st.st_size,
        st.st_mtime_ns,
        {"format": "BMP", "width": ISBI_W, "height": ISBI_H, "mode": "L"},
    ]
    assert entries[str(isbi_image(root))][2].startswith("not an image")  # a problem is cached too

    judged = []
    real = checks._judge
    monkeypatch.setattr(checks, "_judge", lambda path: judged.append(path) or real(path))
    monkeypatch.setattr(checks.ImageHeaders, "_memo", {})  # a new process: only the file remains
    assert isbi2015.check(root, cache_dir=cache) == want
    assert judged == []

    Image.fromarray(np.zeros((ISBI_H, ISBI_W), np.uint8)).save(isbi_image(root))  # fixed: new size and mtime
    assert isbi2015.check(root, cache_dir=cache) == []
    assert judged == [isbi_image(root)]
    assert json.loads((cache / checks.CACHE_FILE).read_text())["files"][str(isbi_image(root))][2]["format"] == "BMP"


def test_cache_of_other_settings_or_corrupt_is_ignored(tmp_path, monkeypatch):
    root = make_isbi(tmp_path / "isbi")
    cache = tmp_path / "cache"
    isbi2015.check(root, cache_dir=cache)
    monkeypatch.setattr(checks.ImageHeaders, "_memo", {})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", ISBI_W * ISBI_H - 1)  # the verdicts depend on the limit
    got = isbi2015.check(root, cache_dir=cache)
    assert len(got) == 4 and all(f"over Pillow's limit of {ISBI_W * ISBI_H - 1}" in p for p in got)
    monkeypatch.undo()
    (cache / checks.CACHE_FILE).write_text("{not json")
    monkeypatch.setattr(checks.ImageHeaders, "_memo", {})
    assert isbi2015.check(root, cache_dir=cache) == []
    assert len(json.loads((cache / checks.CACHE_FILE).read_text())["files"]) == 4


def test_spec_validation_shows_at_most_max_problems_and_says_how_many_more(tmp_path, monkeypatch):
    import trainables.data
    from trainables.config import TrialConfig

    root = make_isbi(tmp_path / "isbi")
    # One wrong setting flags every annotation file of the dataset: 8 here (4 images × 2 doctors).
    cfg = TrialConfig.from_dict({"data": {"dataset": "isbi2015", "root": str(root), "num_landmarks": 20}}).data
    assert len(trainables.data.problems(cfg)) == 8
    monkeypatch.setattr(trainables.data, "MAX_PROBLEMS", 3)
    found = trainables.data.problems(cfg)
    assert len(found) == 4
    assert found[-1].endswith("… and 5 more problems; `python -m trainables.data.isbi2015 ROOT` lists them all")
