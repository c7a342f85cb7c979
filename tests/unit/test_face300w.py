"""300-W reader on tiny fixtures in the real on-disk format (images next to CRLF .pts files), and the flip map."""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import face300w
from trainables.data.dataset import LandmarkDataset
from trainables.data.record import DatasetFormatError
from trainables.problems import Problem

K = 68
# folder -> (stem, suffix); "2_1" and "10_1" test string sorting of stems
FILES = {
    "afw": [("2_1", ".jpg"), ("10_1", ".jpg")],
    "helen/trainset": [("100032540_1", ".jpg")],
    "lfpw/trainset": [("image_0001", ".png")],
    "helen/testset": [("296814969_3", ".jpg")],
    "lfpw/testset": [("image_0002", ".png")],
    "ibug": [("image_003_1", ".jpeg")],
}


def _file_coords(offset: float) -> np.ndarray:
    """What a .pts file holds (1-based): x = 1 + 1.5 k + offset, y = 11 + k."""
    k = np.arange(K, dtype=np.float64)
    return np.stack([1 + 1.5 * k + offset, 11 + k], axis=1)


def _pts_text(xy: np.ndarray, n_points: int = K, nl: str = "\r\n") -> str:
    lines = ["version: 1", f"n_points: {n_points}", "{"] + [f"{x:g} {y:g}" for x, y in xy] + ["}", "", ""]
    return nl.join(lines)


def _make_dataset(root: Path, folders=FILES) -> Path:
    for i, (folder, files) in enumerate(folders.items()):
        d = root / folder
        d.mkdir(parents=True)
        for j, (stem, suffix) in enumerate(files):
            fmt = "PNG" if suffix == ".png" else "JPEG"
            Image.new("RGB", (5, 4), (10 * i, 20, 30)).save(d / f"{stem}{suffix}", format=fmt)
            (d / f"{stem}.pts").write_bytes(_pts_text(_file_coords(10 * i + j)).encode())
        (d / "readme.txt").write_text("not an image")  # other files are ignored
    return root


def test_read_pts_shifts_to_zero_based(tmp_path):
    path = tmp_path / "a.pts"
    path.write_bytes(_pts_text(_file_coords(0.0)).encode())  # CRLF, two trailing blank lines
    xy = face300w.read_pts(path)
    assert xy.shape == (K, 2) and xy.dtype == np.float64
    # file value 1 + 1.5 k is 0-based 1.5 k; 11 + k is 10 + k
    assert xy[0].tolist() == [0.0, 10.0] and xy[67].tolist() == [100.5, 77.0]
    np.testing.assert_array_equal(xy, _file_coords(0.0) - 1)


def test_read_pts_bom_lf_and_whitespace(tmp_path):
    path = tmp_path / "b.pts"
    body = ["  version:  1 ", "n_points:68", " { "] + [f" {x:g}\t {y:g} " for x, y in _file_coords(0.0)] + ["}  "]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(body).encode() + b"\n\n")
    np.testing.assert_array_equal(face300w.read_pts(path), _file_coords(0.0) - 1)


def test_load_split_ids_order_coordinates_spacing_and_crop(tmp_path):
    root = _make_dataset(tmp_path / "300w")
    recs = face300w.load_split(root, "train")
    assert [r.id for r in recs] == ["afw/10_1", "afw/2_1", "helen/trainset/100032540_1", "lfpw/trainset/image_0001"]
    assert recs[0].image_path == root / "afw" / "10_1.jpg"
    assert recs[3].image_path == root / "lfpw" / "trainset" / "image_0001.png"
    np.testing.assert_array_equal(recs[0].landmarks, _file_coords(1) - 1)  # afw: folder 0, second file
    np.testing.assert_array_equal(recs[1].landmarks, _file_coords(0) - 1)
    np.testing.assert_array_equal(recs[3].landmarks, _file_coords(20) - 1)
    assert all(math.isnan(r.spacing_mm) for r in recs)

    # afw/2_1: x 0 .. 100.5, y 10 .. 77 -> box 100.5 x 67, centre (50.25, 43.5)
    # side 1.25 * 100.5 = 125.625, half 62.8125 -> (-12.5625, -19.3125, 113.0625, 106.3125)
    assert recs[1].crop == (-12.5625, -19.3125, 113.0625, 106.3125)
    # crop_scale 1: half 50.25 -> (0, -6.75, 100.5, 93.75)
    assert face300w.load_split(root, "train", crop_scale=1.0)[1].crop == (0.0, -6.75, 100.5, 93.75)


def test_common_challenging_full(tmp_path):
    root = _make_dataset(tmp_path / "300w")
    common = ["helen/testset/296814969_3", "lfpw/testset/image_0002"]
    assert [r.id for r in face300w.load_split(root, "common")] == common
    assert [r.id for r in face300w.load_split(root, "challenging")] == ["ibug/image_003_1"]
    assert [r.id for r in face300w.load_split(root, "full")] == [
        "helen/testset/296814969_3",
        "ibug/image_003_1",
        "lfpw/testset/image_0002",
    ]
    assert face300w.SPLITS["full"] == face300w.SPLITS["common"] + face300w.SPLITS["challenging"]


def test_private_test_set_is_optional(tmp_path):
    root = _make_dataset(tmp_path / "300w")
    assert face300w.layout_problems(root) == []
    problems = face300w.split_problems(root, "test")
    assert len(problems) == 2 and all("'test'" in p for p in problems)
    assert "01_Indoor" in problems[0] and "02_Outdoor" in problems[1]
    with pytest.raises(DatasetFormatError, match=r"01_Indoor: image folder of split 'test' not found"):
        face300w.load_split(root, "test")

    _make_dataset(root, {"300W/01_Indoor": [("indoor_001", ".png")], "300W/02_Outdoor": [("outdoor_001", ".png")]})
    assert face300w.split_problems(root, "test") == []
    ids = [r.id for r in face300w.load_split(root, "test")]
    assert ids == ["300W/01_Indoor/indoor_001", "300W/02_Outdoor/outdoor_001"]


def test_layout_problems_name_affected_splits(tmp_path):
    missing = tmp_path / "nope"
    problems = face300w.layout_problems(missing)
    assert len(problems) == 1 and str(missing) in problems[0]

    root = _make_dataset(tmp_path / "300w")
    (root / "ibug").rename(root / "IBUG")
    problems = face300w.layout_problems(root)
    assert problems == [f"{root / 'ibug'}: folder missing (affects split 'challenging', 'full')"]
    assert face300w.split_problems(root, "train") == []


def test_image_without_pts_names_expected_pts(tmp_path):
    root = _make_dataset(tmp_path / "300w")
    pts = root / "helen" / "trainset" / "100032540_1.pts"
    pts.unlink()
    with pytest.raises(DatasetFormatError) as e:
        face300w.load_split(root, "train")
    assert str(e.value).startswith(f"{pts}: .pts file not found")


def _bad_pts(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.pts"
    path.write_bytes(text.encode())
    return path


def _lines() -> list[str]:
    return _pts_text(_file_coords(0.0)).split("\r\n")  # [version, n_points, {, 68 points, }, "", ""]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ls: ls.__setitem__(0, "versoin 1"), r':1: expected "version: <number>" header, got "versoin 1"'),
        (lambda ls: ls.__setitem__(1, "n_points: 67"), r":2: n_points is 67, expected 68"),
        (lambda ls: ls.__setitem__(1, "n_points: many"), r':2: expected "n_points: <integer>" header'),
        (lambda ls: ls.__setitem__(2, "["), r':3: expected "\{" opening the points, got "\["'),
        (lambda ls: ls.__setitem__(3 + 5, "12.O 4"), r':9: expected "x y" numbers, got "12.O 4"'),
        (lambda ls: ls.__setitem__(3 + 5, "12 4 7"), r':9: expected "x y" numbers, got "12 4 7"'),
        (lambda ls: ls.__delitem__(slice(3 + 60, 3 + 68)), r":64: too few points, found 60, expected 68"),
        (lambda ls: ls.__delitem__(slice(3 + 68, None)), r':72: expected "\}" after 68 points, got the end'),
        (lambda ls: ls.insert(3 + 68, "1 2"), r':72: expected "\}" after 68 points, got "1 2"'),
        (lambda ls: ls.append("junk"), r':75: unexpected text after the closing "\}": "junk"'),
    ],
)
def test_bad_pts_names_file_and_line(tmp_path, edit, message):
    lines = _lines()
    edit(lines)
    path = _bad_pts(tmp_path, "\r\n".join(lines))
    with pytest.raises(DatasetFormatError, match=f"^{path}{message}"):
        face300w.read_pts(path)


def test_file_ending_early(tmp_path):
    path = _bad_pts(tmp_path, "version: 1\r\nn_points: 68\r\n{\r\n1 2\r\n")
    with pytest.raises(DatasetFormatError, match=r"bad\.pts:5: too few points, found 1, expected 68"):
        face300w.read_pts(path)
    path = _bad_pts(tmp_path, "version: 1\n")
    with pytest.raises(DatasetFormatError, match=r'bad\.pts:2: file ends before the "n_points: 68" header'):
        face300w.read_pts(path)


def test_bad_pts_inside_a_split_names_that_file(tmp_path):
    root = _make_dataset(tmp_path / "300w")
    pts = root / "ibug" / "image_003_1.pts"
    lines = _lines()
    lines[1] = "n_points: 49"
    pts.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(DatasetFormatError, match=f"^{pts}:2: n_points is 49, expected 68"):
        face300w.load_split(root, "full")


def test_bad_arguments_are_value_errors(tmp_path):
    root = _make_dataset(tmp_path / "300w")
    with pytest.raises(ValueError) as e:
        face300w.load_split(root, "valid")
    assert not isinstance(e.value, DatasetFormatError)
    assert all(s in str(e.value) for s in ("'valid'", "train", "common", "challenging", "full", "test"))
    with pytest.raises(ValueError, match="unknown split 'helen'"):
        face300w.split_problems(root, "helen")
    with pytest.raises(ValueError, match="crop_scale"):
        face300w.load_split(root, "train", crop_scale=0.0)


def test_flip_index_involution_and_known_pairs():
    f = face300w.FLIP_INDEX
    assert len(f) == K and sorted(f) == list(range(K))
    assert all(f[f[i]] == i for i in range(K))
    assert (f[36], f[45], f[0], f[16], f[8], f[30], f[33], f[51], f[57], f[62], f[66]) == (
        45,
        36,
        16,
        0,
        8,
        30,
        33,
        51,
        57,
        62,
        66,
    )
    assert face300w.IOD_PAIR == (36, 45) and face300w.NUM_LANDMARKS == 68


def _symmetric_face(width: int) -> np.ndarray:
    """A face drawn from the 68-point semantics alone (not from FLIP_INDEX), mirror-symmetric about x = (W-1)/2."""
    cx, cy = (width - 1) / 2.0, 60.0
    pts = []

    def ring(ex, ey, rx, ry, degrees):  # y grows downwards, so "up" is -sin
        return [(ex + rx * math.cos(math.radians(a)), ey - ry * math.sin(math.radians(a))) for a in degrees]

    pts += [(cx + 40 * math.cos(math.pi * (1 - i / 16)), cy + 40 * math.sin(math.pi * i / 16)) for i in range(17)]
    pts += [(cx - 30 + 5 * k, cy - 30 - (2 - abs(k - 2))) for k in range(5)]  # left brow, image-left to right
    pts += [(cx + 10 + 5 * k, cy - 30 - (2 - abs(k - 2))) for k in range(5)]  # right brow
    pts += [(cx, cy - 15 + 5 * k) for k in range(4)]  # nose bridge, top to bottom
    pts += [(cx + 5 * (k - 2), cy + 10 + abs(k - 2)) for k in range(5)]  # nostrils, left to right
    pts += ring(cx - 20, cy - 15, 6, 3, (180, 120, 60, 0, -60, -120))  # left eye: outer corner first
    pts += ring(cx + 20, cy - 15, 6, 3, (180, 120, 60, 0, -60, -120))  # right eye: inner corner first
    pts += ring(cx, cy + 25, 15, 6, (180, 150, 120, 90, 60, 30, 0, -30, -60, -90, -120, -150))  # outer lips
    pts += ring(cx, cy + 25, 10, 3, (180, 135, 90, 45, 0, -45, -90, -135))  # inner lips
    return np.array(pts)


def test_mirroring_a_symmetric_face_gives_it_back():
    width = 129
    face = _symmetric_face(width)
    assert face.shape == (K, 2)
    mirrored = face.copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    mirrored = mirrored[list(face300w.FLIP_INDEX)]
    np.testing.assert_allclose(mirrored, face, atol=1e-9)
    assert not np.allclose(face[:, 0], width - 1 - face[:, 0])  # the flip alone does not do it


# --- faces cut by the photo's border: points outside the image are kept (issue 28) --------------------


def _ring(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """68 points on an ellipse, landmark k at angle 2πk/68: k = 0 at (cx + rx, cy), k = 17 at (cx, cy + ry)."""
    t = 2 * np.pi * np.arange(K) / K
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _write_face(image: Path, size: tuple[int, int], file_xy: np.ndarray, grey: int = 200) -> Path:
    """An image of size (W, H), one grey level, and its .pts holding file_xy (1-based, as the release writes them)."""
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, grey).save(image)
    pts = image.with_suffix(".pts")
    pts.write_bytes(
        (
            "\r\n".join(["version: 1", f"n_points: {K}", "{"] + [f"{x:.4f} {y:.4f}" for x, y in file_xy] + ["}"])
            + "\r\n"
        ).encode()
    )
    return pts


def _inside_dataset(root: Path, size: tuple[int, int]) -> Path:
    """Every folder of train/common/challenging with one face well inside its W×H image."""
    w, h = size
    for folder in ("afw", "helen/trainset", "lfpw/trainset", "helen/testset", "lfpw/testset", "ibug"):
        _write_face(root / folder / "face.png", size, _ring((w + 1) / 2, (h + 1) / 2, w / 4, h / 4))
    return root


def test_one_based_points_on_the_last_column_and_row_are_inside(tmp_path):
    # A 5×4 image. The file is 1-based: its last column is x = 5, read as 4 (the 0-based centre of
    # column 4), its last row y = 4 read as 3. The image covers 0-based [-0.5, 4.5] × [-0.5, 3.5], the
    # file's [0.5, 5.5] × [0.5, 4.5]: its outer corner (5.5, 4.5) reads (4.5, 3.5), on the edge, and
    # (0.5, 0.5) reads (-0.5, -0.5): both inside. (5.6, 4) reads (4.6, 3), 0.1 px past the right edge.
    root = _inside_dataset(tmp_path / "300w", (5, 4))
    xy = _ring(3.0, 2.5, 1.25, 1.0)
    xy[0], xy[1], xy[2] = (5, 4), (5.5, 4.5), (0.5, 0.5)
    pts = _write_face(root / "ibug" / "face.png", (5, 4), xy)
    assert face300w.read_pts(pts)[:3].tolist() == [[4.0, 3.0], [4.5, 3.5], [-0.5, -0.5]]
    assert face300w.check(root, cache_dir=tmp_path / "cache") == []

    xy[0] = (5.6, 4)
    pts = _write_face(root / "ibug" / "face.png", (5, 4), xy)
    (note,) = face300w.check(root, cache_dir=tmp_path / "cache")
    assert note.kind == Problem.NOTE
    assert note.startswith(
        f"{root}: 1 landmark in 1 annotation file lies outside their image (faces cut by the "
        f"photo's border), e.g. {pts}:4: landmark 1 at (5.6, 4) is outside the 5×4 (W×H) image face.png;"
    )


def test_a_face_cut_by_the_frame_is_kept_and_its_crop_padded_black(tmp_path):
    # A 20×16 image (grey 200) whose face runs past the right edge: 0-based points on the ellipse centred
    # (15, 7.5), radii (8, 5), so x spans [7, 23] and y [2.5, 12.5]. Past x = 19.5 (the right edge):
    # 15 + 8 cos t > 19.5 <=> cos t > 0.5625 <=> |t| < 55.8°, t = 5.29° k: k = 0..10 and 58..67, 21 points.
    root = _inside_dataset(tmp_path / "300w", (20, 16))
    _write_face(root / "ibug" / "face.png", (20, 16), _ring(15, 7.5, 8, 5) + 1)  # + 1: the file is 1-based
    (note,) = face300w.check(root, cache_dir=tmp_path / "cache")
    assert note.kind == Problem.NOTE and "21 landmarks in 1 annotation file lie outside their image" in note

    (rec,) = face300w.load_split(root, "challenging")
    # Box 16 × 10 centred (15, 7.5); side 1.25 × 16 = 20, half 10: (5, -2.5, 25, 17.5), past the image's right
    # (19.5) and top (-0.5) edges.
    assert rec.crop == pytest.approx((5.0, -2.5, 25.0, 17.5))
    ds = LandmarkDataset([rec], (32, 32))
    # 20 original px onto 32 input px: 0.625 px each, x_in = (x - 5) / 0.625 - 0.5, y_in = (y + 2.5) / 0.625 - 0.5.
    # Landmark 0 at (23, 7.5), 3.5 px right of the image, is at input (28.3, 15.5): inside the input.
    assert ds.coords[0, 0].tolist() == pytest.approx([28.3, 15.5], abs=1e-5)
    assert ((ds.coords[0] >= -0.5) & (ds.coords[0] <= 31.5)).all()
    # The image's right edge 19.5 is input x 22.7 and its top edge -0.5 input y 2.7: input columns from 24
    # (original x >= 20) and rows 0..1 (original y <= -1.25) see only padding, black; the inside stays grey 200.
    image = ds.images[0, 0]
    assert (image[:, 24:] == 0).all() and (image[:2] == 0).all()
    assert (image[5:27, 1:22] == 200).all()
