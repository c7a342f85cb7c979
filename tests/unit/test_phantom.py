"""Phantom dataset: written in the ISBI layout, deterministic, cached safely, locally informative."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from trainables.data import isbi2015, phantom
from trainables.data.phantom import PhantomConfig

CFG = PhantomConfig(num_train=4, num_test1=2, num_test2=2, image_size=(96, 80), seed=3)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return phantom.generate(tmp_path_factory.mktemp("ph") / "data", CFG)


def test_layout_counts_size_and_dtype(root):
    assert isbi2015.layout_problems(root) == []
    ids = {s: [r.id for r in isbi2015.load_split(root, s)] for s in isbi2015.SPLIT_DIRS}
    assert ids == {"train": ["001", "002", "003", "004"], "test1": ["005", "006"], "test2": ["007", "008"]}
    image = isbi2015.read_image(root / "RawImage" / "Test2Data" / "008.bmp")
    assert image.shape == (96, 80) and image.dtype == np.uint8
    text = (root / "AnnotationsByMD" / "400_senior" / "001.txt").read_bytes()
    assert text.count(b"\r\n") == 19 + 2 and text.endswith(b"1\r\n2\r\n")  # CRLF + trailing labels


def test_annotations_are_noisy_copies_of_truth(root):
    truth = phantom.true_landmarks(root)
    assert sorted(truth) == [f"{i:03d}" for i in range(1, 9)]
    senior = {r.id: r.landmarks for s in isbi2015.SPLIT_DIRS for r in isbi2015.load_split(root, s, annotator="senior")}
    junior = {r.id: r.landmarks for s in isbi2015.SPLIT_DIRS for r in isbi2015.load_split(root, s, annotator="junior")}
    for rid, true in truth.items():
        assert true.shape == (19, 2)
        assert (true >= 0).all() and (true[:, 0] <= 79).all() and (true[:, 1] <= 95).all()
        assert np.abs(senior[rid] - true).max() <= 0.5 + 5 * CFG.senior_noise_px
        assert np.abs(junior[rid] - true).max() <= 0.5 + 5 * CFG.junior_noise_px
    s, j = np.stack(list(senior.values())), np.stack(list(junior.values()))
    assert (s != j).any(axis=-1).mean() > 0.3  # the two doctors disagree on many points
    err = {name: np.abs(a - np.stack(list(truth.values()))).mean() for name, a in (("s", s), ("j", j))}
    assert err["s"] < err["j"]  # the junior is noisier


def test_landmarks_are_locally_visible(root):
    """Mean intensity in a 3x3 window at a landmark vs. one far away: markers make them differ."""
    rng = np.random.default_rng(0)
    truth = phantom.true_landmarks(root)
    diffs = []
    for rec in isbi2015.load_split(root, "train"):
        image = isbi2015.read_image(rec.image_path).astype(np.float64)
        h, w = image.shape
        for x, y in np.rint(truth[rec.id]).astype(int):
            while True:
                fx, fy = rng.integers(1, w - 1), rng.integers(1, h - 1)
                if np.hypot(fx - x, fy - y) > 0.25 * w:
                    break
            at = image[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].mean()
            far = image[fy - 1 : fy + 2, fx - 1 : fx + 2].mean()
            diffs.append(at - far)
    assert np.mean(diffs) > 40  # ~100 with the markers


def test_deterministic_per_seed(root, tmp_path):
    again = phantom.generate(tmp_path / "again", CFG)
    assert _tree_bytes(again) == _tree_bytes(root)
    other = phantom.generate(tmp_path / "other", dataclasses.replace(CFG, seed=4))
    a, b = _tree_bytes(root), _tree_bytes(other)
    assert a.keys() == b.keys()
    assert a["RawImage/TrainingData/001.bmp"] != b["RawImage/TrainingData/001.bmp"]


def test_ensure_reuses_matching_and_rejects_other_config(tmp_path):
    cfg = dataclasses.replace(CFG, num_train=1, num_test1=1, num_test2=0)
    (tmp_path / "data").mkdir()  # an empty folder counts as absent
    root = phantom.ensure(tmp_path / "data", cfg)
    (root / "sentinel").write_text("kept")
    assert phantom.ensure(root, cfg) == root and (root / "sentinel").exists()  # reused, not rewritten
    with pytest.raises(ValueError) as e:
        phantom.ensure(root, dataclasses.replace(cfg, seed=9))
    assert str(root) in str(e.value) and "seed" in str(e.value)
    (root / "phantom.json").unlink()
    with pytest.raises(ValueError, match="phantom.json"):
        phantom.ensure(root, cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folders left behind


def test_generate_losing_the_race_keeps_the_winner(tmp_path, monkeypatch):
    cfg = dataclasses.replace(CFG, num_train=1, num_test1=1, num_test2=1)
    root = tmp_path / "data"
    real_write = phantom._write_dataset

    def write_then_lose(out, c):  # another process publishes root while we are still building
        real_write(out, c)
        monkeypatch.setattr(phantom, "_write_dataset", real_write)
        phantom.generate(root, c)
        (root / "winner").write_text("")

    monkeypatch.setattr(phantom, "_write_dataset", write_then_lose)
    assert phantom.generate(root, cfg) == root
    assert (root / "winner").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_more_landmarks_and_cli(tmp_path, capsys):
    assert (
        phantom.main(
            [
                str(tmp_path / "k25"),
                "--num-train",
                "1",
                "--num-test1",
                "1",
                "--num-test2",
                "1",
                "--size",
                "64",
                "48",
                "--landmarks",
                "25",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1 train / 1 test1 / 1 test2" in out and "64x48" in out and str(tmp_path / "k25") in out
    recs = isbi2015.load_split(tmp_path / "k25", "test1", num_landmarks=25)
    assert recs[0].id == "002" and recs[0].landmarks.shape == (25, 2)
    assert isbi2015.read_image(recs[0].image_path).shape == (64, 48)


def test_noise_spread_makes_later_landmarks_noisier(tmp_path):
    # noise_spread 4 scales landmark k's noise by 1 + 4·k/(K−1): 1× for the first, 5× for the last.
    cfg = PhantomConfig(
        num_train=40,
        num_test1=1,
        num_test2=1,
        image_size=(96, 80),
        num_landmarks=5,
        senior_noise_px=1.0,
        junior_noise_px=1.0,
        noise_spread=4.0,
        seed=5,
    )
    root = phantom.generate(tmp_path / "p", cfg)
    truth = phantom.true_landmarks(root)
    recs = isbi2015.load_split(root, "train", num_landmarks=5, annotator="senior")
    err = np.stack([r.landmarks - truth[r.id] for r in recs])  # (40, 5, 2)
    sd = err.std(axis=(0, 2))
    assert sd[0] < 1.6 and sd[-1] > 3.0  # about 1.0 and 5.0 (less where clipped to the image)
    assert (np.diff(sd) > -0.5).all()
