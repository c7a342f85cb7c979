"""Hand-atlas reader on tiny fixtures in the real on-disk format (all.csv with CRLF and nan, PNG/JPEG, split files)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import hand
from trainables.data.record import DatasetFormatError

K = 37
IDS = ["3128", "0012", "0007"]  # CSV order; ids are strings, leading zeros kept
SPLITS = {"set1": ["3128", "", "0012"], "set2": ["0007"], "set3": ["0012"]}  # "" = a blank line


def _coords(rid: str) -> np.ndarray:
    """Known (K, 2) coordinates; the ruler landmarks 0 and 4 are set per id below."""
    n = int(rid)
    xy = np.stack([np.arange(K) * 2.5 + n, np.arange(K) * 1.5 + 200], axis=1)
    if rid == "3128":
        xy[0], xy[4] = (10.0, 20.0), (13.0, 24.0)  # wrist width sqrt(3² + 4²) = 5 px -> 50 / 5 = 10 mm/px
    elif rid == "0012":
        xy[0], xy[4] = (0.5, 0.0), (30.5, 40.0)  # sqrt(30² + 40²) = 50 px -> 50 / 50 = 1 mm/px
    else:
        xy[0], xy[4] = (100.0, 100.0), (100.0, 300.0)  # 200 px -> 0.25 mm/px
    return xy


def _row(rid: str, xy: np.ndarray) -> str:
    return ",".join([rid] + [f"{v:g}" for v in xy.ravel()])


def _make_dataset(root: Path) -> Path:
    rows = []
    for rid in IDS:
        fields = _row(rid, _coords(rid)).split(",")
        if rid == "0007":
            fields[1 + 2 * 10] = "NaN"  # x of landmark 10 missing -> whole row NaN
            fields[1 + 2 * 20 + 1] = "nan"  # y of landmark 20 missing
        rows.append(",".join(fields))
    rows.insert(1, "")  # a blank line
    root.mkdir(parents=True)
    (root / "all.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    images = root / "images"
    images.mkdir()
    Image.fromarray(np.full((3, 4), 7, np.uint8)).save(images / "3128.png")
    Image.new("RGB", (4, 3), (9, 9, 9)).save(images / "3128.jpg")  # PNG wins over JPEG
    Image.new("RGB", (4, 3), (50, 50, 50)).save(images / "0012.jpg")
    Image.new("L", (4, 3), 80).save(images / "0007.jpeg", format="JPEG")
    (root / "splits").mkdir()
    for name, ids in SPLITS.items():
        (root / "splits" / f"{name}.txt").write_bytes(("\r\n".join(ids) + "\r\n\r\n").encode())
    return root


def test_load_split_exact_coordinates_order_paths_and_ruler_spacing(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    recs = hand.load_split(root, "set1")
    assert [r.id for r in recs] == ["3128", "0012"]  # split-file order, not sorted
    assert recs[0].image_path == root / "images" / "3128.png"
    assert recs[1].image_path == root / "images" / "0012.jpg"
    for r in recs:
        assert r.landmarks.shape == (K, 2) and r.landmarks.dtype == np.float64 and r.crop is None
        np.testing.assert_array_equal(r.landmarks, _coords(r.id))
    assert recs[0].spacing_mm == 10.0 and recs[1].spacing_mm == 1.0

    (r7,) = hand.load_split(root, "set2")
    expected = _coords("0007")
    expected[[10, 20]] = np.nan
    np.testing.assert_array_equal(r7.landmarks, expected)  # NaN rows compare equal here
    assert r7.image_path.name == "0007.jpeg" and r7.spacing_mm == 0.25


def test_all_and_joined_splits(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    assert [r.id for r in hand.load_split(root, "all")] == IDS  # CSV order
    assert [r.id for r in hand.load_split(root, "set2+set3")] == ["0007", "0012"]
    assert hand.split_names(root) == ["all", "set1", "set2", "set3"]
    # a custom ruler: landmarks 1 and 2 of id 0012 are (2.5 + 12, 201.5) and (5 + 12, 203): sqrt(2.5² + 1.5²) px
    (r,) = hand.load_split(root, "set3", ruler=(1, 2), ruler_mm=10.0)
    assert r.spacing_mm == pytest.approx(10.0 / np.hypot(2.5, 1.5))


def test_read_csv_and_read_hand_image(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    table = hand.read_csv(root / "all.csv")
    assert list(table) == IDS
    assert np.isnan(table["0007"][10]).all() and np.isnan(table["0007"][20]).all()
    assert not np.isnan(table["0007"][11]).any()
    im = hand.read_hand_image(root / "images" / "3128.png")
    assert im.shape == (3, 4) and im.dtype == np.uint8 and (im == 7).all()


def test_wrong_column_count_names_file_line_and_counts(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    csv = root / "all.csv"
    lines = csv.read_bytes().decode().split("\r\n")
    lines[2] = lines[2].rsplit(",", 1)[0]  # line 3 (after the blank line 2) loses its last column
    csv.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(DatasetFormatError) as e:
        hand.read_csv(csv)
    assert str(e.value) == f"{csv}:3: expected 75 columns (id + 37 x,y pairs), found 74"


def test_non_numeric_names_file_line_and_column(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    csv = root / "all.csv"
    lines = csv.read_bytes().decode().split("\r\n")
    fields = lines[0].split(",")
    fields[6] = "12O"  # letter O; column 7 = y of landmark 3 (1-based)
    lines[0] = ",".join(fields)
    csv.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(DatasetFormatError) as e:
        hand.load_split(root, "all")
    assert str(e.value) == f'{csv}:1: column 7: expected a number or nan, got "12O"'


def test_duplicate_csv_id(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    csv = root / "all.csv"
    csv.write_bytes(csv.read_bytes() + (_row("0012", _coords("0012")) + "\r\n").encode())
    with pytest.raises(DatasetFormatError, match=r"all\.csv:5: id '0012' already given on line 3"):
        hand.read_csv(csv)


def test_split_id_not_in_csv_names_split_file_and_line(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    (root / "splits" / "set2.txt").write_bytes(b"0007\r\n\r\n12\r\n")  # "12" is not "0012"
    with pytest.raises(DatasetFormatError, match=r"set2\.txt:3: id '12' is not in .*all\.csv"):
        hand.load_split(root, "set2")
    with pytest.raises(DatasetFormatError, match=r"set3\.txt:1: id '0012' already listed at .*set1\.txt:3"):
        hand.load_split(root, "set1+set3")


def test_missing_ruler_landmark_names_csv_line(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    csv = root / "all.csv"
    xy = _coords("0012")
    xy[4, 1] = np.nan
    lines = csv.read_bytes().decode().split("\r\n")
    lines[2] = _row("0012", xy)
    csv.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(DatasetFormatError, match=r"all\.csv:3: id '0012' lacks ruler landmark 5"):
        hand.load_split(root, "set3")
    assert len(hand.load_split(root, "set2")) == 1  # only the split's own rows need a ruler


def test_missing_image_names_expected_path(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    (root / "images" / "0007.jpeg").unlink()
    with pytest.raises(DatasetFormatError) as e:
        hand.load_split(root, "set2")
    assert str(e.value).startswith(f"{root / 'images' / '0007.png'}: image of id '0007' not found")
    assert "set2.txt:1" in str(e.value)


def test_other_image_format_needs_simpleitk(tmp_path, monkeypatch):
    root = _make_dataset(tmp_path / "hand")
    (root / "images" / "0007.jpeg").unlink()
    mha = root / "images" / "0007.mha"
    mha.write_bytes(b"ObjectType = Image\n")
    monkeypatch.setattr(hand, "_have_simpleitk", lambda: False)
    with pytest.raises(DatasetFormatError, match=r"0007\.mha.*pip install SimpleITK"):
        hand.load_split(root, "set2")
    monkeypatch.setitem(__import__("sys").modules, "SimpleITK", None)  # import SimpleITK now fails
    with pytest.raises(DatasetFormatError, match=r"0007\.mha.*pip install SimpleITK"):
        hand.read_hand_image(mha)
    monkeypatch.setattr(hand, "_have_simpleitk", lambda: True)
    assert hand.load_split(root, "set2")[0].image_path == mha


def test_bad_arguments_are_value_errors_listing_splits(tmp_path):
    root = _make_dataset(tmp_path / "hand")
    for bad in ("set4", "set1+", "set1+set1", "train"):
        with pytest.raises(ValueError) as e:
            hand.load_split(root, bad)
        assert not isinstance(e.value, DatasetFormatError)
        assert all(s in str(e.value) for s in (repr(bad), "all", "set1", "set2", "set3"))
    with pytest.raises(ValueError, match="ruler_mm"):
        hand.load_split(root, "set1", ruler_mm=0.0)
    with pytest.raises(ValueError, match="ruler"):
        hand.load_split(root, "set1", ruler=(0, 37))


def test_flip_index_is_identity():
    assert hand.FLIP_INDEX == tuple(range(37)) and hand.NUM_LANDMARKS == 37


def test_layout_problems(tmp_path):
    missing = tmp_path / "nope"
    problems = hand.layout_problems(missing)
    assert len(problems) == 1 and str(missing) in problems[0]

    root = _make_dataset(tmp_path / "hand")
    assert hand.layout_problems(root) == []
    for p in (root / "splits").iterdir():
        p.unlink()
    (root / "all.csv").unlink()
    problems = hand.layout_problems(root)
    assert len(problems) == 2 and "all.csv" in problems[0] and "no .txt split files" in problems[1]
    (root / "images").rename(root / "imgs")
    assert any("images" in p for p in hand.layout_problems(root))
