"""ISBI 2015 reader on tiny fixtures written in the real on-disk format (BMPs, CRLF annotation files)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import isbi2015
from trainables.data.isbi2015 import DatasetFormatError

K = 19
SPLITS = {"train": ["002", "001"], "test1": ["003"], "test2": ["004"]}  # written out of order on purpose


def _coords(rid: str, doctor: str) -> np.ndarray:
    """Distinct, known integer coordinates per id and doctor: (K, 2)."""
    base = np.stack([np.arange(K) * 10 + int(rid), np.arange(K) * 7 + 100], axis=1)
    return base + (0 if doctor == "senior" else 3)


def _write_annotation(path: Path, xy: np.ndarray, tail: str = "1\r\n2\r\n\r\n\r\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(f"{x},{y}" for x, y in xy) + "\r\n" + tail).encode())


def _make_dataset(root: Path) -> Path:
    for split, ids in SPLITS.items():
        image_dir = root / "RawImage" / isbi2015.SPLIT_DIRS[split]
        image_dir.mkdir(parents=True)
        for rid in ids:
            if rid == "003":  # a 24-bit RGB BMP, like some real files
                Image.new("RGB", (20, 16), (100, 100, 100)).save(image_dir / f"{rid}.bmp")
            else:
                Image.fromarray(np.full((16, 20), int(rid) * 10, np.uint8)).save(image_dir / f"{rid}.bmp")
            for doctor, d in isbi2015.ANNOTATOR_DIRS.items():
                _write_annotation(root / "AnnotationsByMD" / d / f"{rid}.txt", _coords(rid, doctor))
    return root


def test_load_split_exact_coordinates_sorted_ids_and_spacing(tmp_path):
    root = _make_dataset(tmp_path / "isbi")
    senior = isbi2015.load_split(root, "train", annotator="senior")
    assert [r.id for r in senior] == ["001", "002"]
    assert senior[0].image_path == root / "RawImage" / "TrainingData" / "001.bmp"
    assert senior[0].landmarks.shape == (K, 2) and senior[0].landmarks.dtype == np.float64
    np.testing.assert_array_equal(senior[1].landmarks, _coords("002", "senior"))
    assert all(r.spacing_mm == 0.1 for r in senior)

    junior = isbi2015.load_split(root, "train", annotator="junior")
    np.testing.assert_array_equal(junior[1].landmarks, _coords("002", "junior"))
    mean = isbi2015.load_split(root, "train")  # default: mean of the two doctors
    np.testing.assert_allclose(mean[1].landmarks, _coords("002", "senior") + 1.5)

    assert [r.id for r in isbi2015.load_split(root, "test2", num_landmarks=5)] == ["004"]
    assert isbi2015.load_split(root, "test2", num_landmarks=5)[0].landmarks.shape == (5, 2)


def test_read_image_gray_and_rgb_bmp(tmp_path):
    root = _make_dataset(tmp_path / "isbi")
    gray = isbi2015.read_image(root / "RawImage" / "TrainingData" / "002.bmp")
    rgb = isbi2015.read_image(root / "RawImage" / "Test1Data" / "003.bmp")
    for im in (gray, rgb):
        assert im.shape == (16, 20) and im.dtype == np.uint8
    assert (gray == 20).all() and (rgb == 100).all()


def test_load_split_does_not_decode_images_and_read_image_names_bad_file(tmp_path):
    root = _make_dataset(tmp_path / "isbi")
    bad = root / "RawImage" / "TrainingData" / "001.bmp"
    bad.write_bytes(b"not a bitmap")
    assert len(isbi2015.load_split(root, "train")) == 2  # lazily: no decoding here
    with pytest.raises(DatasetFormatError, match="001.bmp"):
        isbi2015.read_image(bad)
    with pytest.raises(DatasetFormatError, match="009.bmp"):
        isbi2015.read_image(bad.with_name("009.bmp"))


def test_annotation_with_floats_whitespace_and_bare_lf(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n".join([" 12.5 , 880 "] + ["1,2"] * (K - 1)) + "\n")
    xy = isbi2015.read_annotation(path)
    assert xy[0].tolist() == [12.5, 880.0] and xy[1].tolist() == [1.0, 2.0]


def test_image_without_annotation_names_missing_file(tmp_path):
    root = _make_dataset(tmp_path / "isbi")
    (root / "AnnotationsByMD" / "400_junior" / "002.txt").unlink()
    with pytest.raises(DatasetFormatError, match=r"400_junior.002\.txt"):
        isbi2015.load_split(root, "train")
    assert len(isbi2015.load_split(root, "train", annotator="senior")) == 2  # senior alone is complete


def test_too_few_lines_says_found_and_expected(tmp_path):
    root = _make_dataset(tmp_path / "isbi")
    path = root / "AnnotationsByMD" / "400_senior" / "003.txt"
    _write_annotation(path, _coords("003", "senior")[:12], tail="\r\n")
    with pytest.raises(DatasetFormatError) as e:
        isbi2015.load_split(root, "test1")
    msg = str(e.value)
    assert str(path) in msg and "found 12" in msg and "19" in msg


def test_non_numeric_line_names_file_line_and_text(tmp_path):
    root = _make_dataset(tmp_path / "isbi")
    path = root / "AnnotationsByMD" / "400_senior" / "002.txt"
    xy = [f"{x},{y}" for x, y in _coords("002", "senior")]
    xy[5] = "12O4,880"  # letter O instead of zero
    path.write_bytes(("\r\n".join(xy) + "\r\n1\r\n").encode())
    with pytest.raises(DatasetFormatError) as e:
        isbi2015.load_split(root, "train")
    assert str(e.value) == f'{path}:6: expected "x,y" numbers, got "12O4,880"'


def test_unknown_split_and_annotator_list_valid_ones(tmp_path):
    root = _make_dataset(tmp_path / "isbi")
    with pytest.raises(ValueError) as e:
        isbi2015.load_split(root, "validation")
    assert all(s in str(e.value) for s in ("validation", "train", "test1", "test2"))
    with pytest.raises(ValueError) as e:
        isbi2015.load_split(root, "train", annotator="intern")
    assert all(s in str(e.value) for s in ("intern", "mean", "senior", "junior"))


def test_empty_split_folder_is_an_error(tmp_path):
    root = _make_dataset(tmp_path / "isbi")
    (root / "RawImage" / "Test2Data" / "004.bmp").unlink()
    with pytest.raises(DatasetFormatError, match="Test2Data"):
        isbi2015.load_split(root, "test2")


def test_layout_problems(tmp_path):
    missing = tmp_path / "nope"
    problems = isbi2015.layout_problems(missing)
    assert len(problems) == 1 and str(missing) in problems[0]

    root = _make_dataset(tmp_path / "isbi")
    assert isbi2015.layout_problems(root) == []

    (root / "AnnotationsByMD" / "400_senior" / "004.txt").unlink()
    problems = isbi2015.layout_problems(root)
    assert len(problems) == 1 and "400_senior" in problems[0] and "004.txt" in problems[0]

    (root / "AnnotationsByMD").rename(root / "Annotations")
    problems = isbi2015.layout_problems(root)
    assert len(problems) == 1 and "AnnotationsByMD" in problems[0]
