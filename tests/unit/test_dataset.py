"""LandmarkDataset: the record frame round trip, black padding, NaN landmarks, the image cache, the registry."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.config import TrialConfig
from trainables.data import DATASETS, problems
from trainables.data.dataset import PIXEL_MEAN, PIXEL_STD, LandmarkDataset, normalize, to_original
from trainables.data.record import DatasetFormatError, Record, read_image

GREY = 100  # background of the test images, so black padding (0) is told apart from the image
BLACK = 0  # grey level of the padding; the dataset keeps uint8 grey levels


def _blob_image(path: Path, size_wh: tuple[int, int], landmarks: np.ndarray) -> Path:
    """A GREY PNG with a 3×3 white blob centred on each (integer) landmark."""
    w, h = size_wh
    raw = np.full((h, w), GREY, np.uint8)
    for x, y in landmarks:
        if np.isfinite(x):
            raw[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
    Image.fromarray(raw).save(path)
    return path


# Input size (H, W) = (15, 20).
# Record "whole": a 60 × 45 image, no crop -> box (-0.5, -0.5, 59.5, 44.5), scale (3, 3).
# Record "crop": a 50 × 40 image, crop (-12.3, 5.2, 47.7, 53.2): 60 × 48 -> scale (3, 3.2). It
#   extends beyond the image's left edge (x = -0.5) and its bottom edge (y = 39.5).
INPUT = (15, 20)
WHOLE = np.array([[10.0, 7.0], [45.0, 30.0], [28.0, 38.0]])
CROP_BOX = (-12.3, 5.2, 47.7, 53.2)
CROPPED = np.array([[3.0, 30.0], [40.0, 10.0], [20.0, 36.0]])


def _round_trip_records(tmp_path) -> list[Record]:
    return [
        Record("whole", _blob_image(tmp_path / "whole.png", (60, 45), WHOLE), WHOLE, 0.1),
        Record("crop", _blob_image(tmp_path / "crop.png", (50, 40), CROPPED), CROPPED, 0.2, crop=CROP_BOX),
    ]


def test_coords_follow_the_frame_by_hand(tmp_path):
    ds = LandmarkDataset(_round_trip_records(tmp_path), INPUT)
    assert len(ds) == 2
    image, coords, frame, spacing = ds[1]
    assert image.shape == (1, 15, 20) and coords.shape == (3, 2) and frame.shape == (4,) and spacing.shape == ()
    # x_in = (x - x0)·W/(x1 - x0) - 0.5: (3 + 12.3)/3 - 0.5 = 4.6; y_in = (30 - 5.2)/3.2 - 0.5 = 7.25
    np.testing.assert_allclose(coords[0].numpy(), [4.6, 7.25], atol=1e-5)
    np.testing.assert_allclose(frame.numpy(), [3.0, 3.2, -12.3, 5.2], atol=1e-6)
    # whole image: x_in = (10 + 0.5)/3 - 0.5 = 3.0, y_in = (7 + 0.5)/3 - 0.5 = 2.0
    np.testing.assert_allclose(ds[0][1][0].numpy(), [3.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(ds[0][2].numpy(), [3.0, 3.0, -0.5, -0.5], atol=1e-6)
    assert ds.spacing.tolist() == pytest.approx([0.1, 0.2])


def test_round_trip_brightest_spot_and_back_to_the_original_pixels(tmp_path):
    recs = _round_trip_records(tmp_path)
    ds = LandmarkDataset(recs, INPUT)
    for i, rec in enumerate(recs):
        image, coords, frame, _ = ds[i]
        img = image[0].numpy()
        for k, (x, y) in enumerate(coords.numpy()):
            # The brightest pixel within 2 input px (6 original px; the blobs are 15+ apart) of coords.
            x0, y0 = max(0, int(round(x)) - 2), max(0, int(round(y)) - 2)
            win = img[y0 : int(round(y)) + 3, x0 : int(round(x)) + 3]
            v, u = np.unravel_index(np.argmax(win), win.shape)
            assert win[v, u] > img.max() * 0.5, (rec.id, k)  # the blob, not background
            assert np.hypot(x0 + u - x, y0 + v - y) <= 0.75, (rec.id, k, (x0 + u, y0 + v), (x, y))
        back = to_original(coords[None], frame[None])[0].double().numpy()
        np.testing.assert_allclose(back, rec.landmarks, atol=1e-4)
    # batched frames give the same
    back = to_original(ds.coords, ds.frames).double().numpy()
    np.testing.assert_allclose(back, np.stack([r.landmarks for r in recs]), atol=1e-4)


def test_crop_beyond_the_image_is_black(tmp_path):
    ds = LandmarkDataset(_round_trip_records(tmp_path), INPUT)
    img = ds[1][0][0]
    # Column j's centre is at x = -12.3 + 3(j + 0.5); the bilinear filter reaches 3 px either side,
    # so columns with -12.3 + 3j + 1.5 + 3 < -0.5 (j <= 2) see only padding.
    assert (img[:, :3] == BLACK).all()
    # Row i's centre is at y = 5.2 + 3.2(i + 0.5), filter ±3.2: rows with that - 3.2 > 39.5 (i >= 12).
    assert (img[12:, :] == BLACK).all()
    # Inside, away from the blobs, the grey background, which the network sees as (100/255 - 0.5)/0.25.
    assert img.dtype == torch.uint8 and img[4, 12].item() == GREY
    assert normalize(img)[4, 12].item() == pytest.approx((GREY / 255 - PIXEL_MEAN) / PIXEL_STD, abs=1e-6)
    assert (ds[0][0] > BLACK).all()  # the uncropped image has no padding


def test_images_stay_uint8_and_become_floats_only_through_normalize(tmp_path):
    ds = LandmarkDataset(_round_trip_records(tmp_path), INPUT)
    # 2 images of 15×20 grey levels: 600 bytes as uint8, a quarter of float32's 2400.
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (2, 1, 15, 20)
    assert ds.images.nbytes == 2 * 15 * 20 and normalize(ds.images).nbytes == 4 * ds.images.nbytes
    # (x/255 - 0.5)/0.25: 0 -> -2, 255 -> 2, 100 -> -0.431373
    got = normalize(torch.tensor([0, 255, 100], dtype=torch.uint8))
    assert got.dtype == torch.float32 and got.tolist() == pytest.approx([-2.0, 2.0, -0.4313725], abs=1e-6)


def test_nan_landmark_stays_nan(tmp_path):
    lm = np.array([[10.0, 7.0], [np.nan, np.nan], [28.0, 38.0]])
    recs = [
        Record("a", _blob_image(tmp_path / "a.png", (60, 45), lm), lm, 0.1),
        Record("b", _blob_image(tmp_path / "b.png", (50, 40), CROPPED), CROPPED, 0.2, crop=CROP_BOX),
    ]
    ds = LandmarkDataset(recs, INPUT)
    coords = ds[0][1]
    assert torch.isnan(coords[1]).all() and torch.isfinite(coords[[0, 2]]).all()
    assert torch.isfinite(ds[1][1]).all()
    back = to_original(ds.coords, ds.frames)
    assert torch.isnan(back[0, 1]).all()
    np.testing.assert_allclose(back[0, [0, 2]].double().numpy(), lm[[0, 2]], atol=1e-4)


# --- the image cache ------------------------------------------------------------------------------


class CountingReader:
    def __init__(self):
        self.paths = []

    def __call__(self, path):
        self.paths.append(Path(path))
        return read_image(path)


def _must_not_read(path):
    raise AssertionError(f"{path}: decoded although cached")


def _npz(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npz"))


def test_cache_decodes_once(tmp_path):
    recs = _round_trip_records(tmp_path)
    cache = tmp_path / "cache"
    reader = CountingReader()
    first = LandmarkDataset(recs, INPUT, reader, cache_dir=cache, name="t")
    assert len(reader.paths) == 2 and len(_npz(cache)) == 1
    second = LandmarkDataset(recs, INPUT, _must_not_read, cache_dir=cache, name="t")
    assert torch.equal(first.images, second.images) and torch.equal(first.coords, second.coords)
    assert torch.equal(first.frames, second.frames)
    uncached = LandmarkDataset(recs, INPUT)
    assert torch.equal(first.images, uncached.images) and torch.equal(first.frames, uncached.frames)
    # Another input size is another entry.
    LandmarkDataset(recs, (10, 10), reader, cache_dir=cache, name="t")
    assert len(reader.paths) == 4 and len(_npz(cache)) == 2


def test_touching_or_rewriting_an_image_makes_a_new_entry(tmp_path):
    recs = _round_trip_records(tmp_path)
    cache = tmp_path / "cache"
    LandmarkDataset(recs, INPUT, CountingReader(), cache_dir=cache, name="t")
    assert len(_npz(cache)) == 1

    st = recs[0].image_path.stat()
    os.utime(recs[0].image_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same bytes, new mtime
    reader = CountingReader()
    LandmarkDataset(recs, INPUT, reader, cache_dir=cache, name="t")
    assert len(reader.paths) == 2 and len(_npz(cache)) == 2

    # Rewrite the other image in place with a brighter background (another file size), mtime put back.
    st = recs[1].image_path.stat()
    raw = read_image(recs[1].image_path)
    raw[raw == GREY] = 160
    Image.fromarray(raw).save(recs[1].image_path, compress_level=0)
    assert recs[1].image_path.stat().st_size != st.st_size
    os.utime(recs[1].image_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    reader = CountingReader()
    ds = LandmarkDataset(recs, INPUT, reader, cache_dir=cache, name="t")
    assert len(reader.paths) == 2 and len(_npz(cache)) == 3
    assert ds[1][0][0, 4, 12].item() == 160


def test_missing_image_names_the_path_and_leaves_no_npz(tmp_path):
    recs = _round_trip_records(tmp_path)
    missing = tmp_path / "nope.png"
    recs.append(Record("nope", missing, WHOLE, 0.1))
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(DatasetFormatError, match=str(missing)):
        LandmarkDataset(recs, INPUT, cache_dir=cache, name="t")
    assert _npz(cache) == []
    with pytest.raises(DatasetFormatError, match=str(missing)):  # without a cache too
        LandmarkDataset(recs, INPUT)


def test_no_records_is_refused_by_name():
    with pytest.raises(ValueError, match="hand/set9: no images"):
        LandmarkDataset([], INPUT, name="hand/set9")


# --- the registry ---------------------------------------------------------------------------------


def test_registry_names_units_and_flip_maps():
    assert set(DATASETS) == {"phantom", "isbi2015", "hand", "300w"}
    assert DATASETS["300w"].unit == "nme" and DATASETS["300w"].nme_pair == (36, 45)
    assert DATASETS["300w"].flip_index(68)[36] == 45
    for name in ("phantom", "isbi2015", "hand"):
        assert DATASETS[name].unit == "mm" and DATASETS[name].nme_pair is None
        assert DATASETS[name].flip_index(5) == (0, 1, 2, 3, 4)


def make_hand(root: Path, n_images: int = 4, k: int = 37) -> Path:
    """A tiny hand atlas in the real layout: all.csv, images/<id>.png, splits/set1.txt, set2.txt."""
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    rows = []
    for i in range(n_images):
        rid = f"{i + 1:04d}"
        xy = np.stack([np.arange(k) % 7 * 5.0 + 3, np.arange(k) // 7 * 6.0 + 4], axis=1)
        rows.append(",".join([rid] + [f"{v:g}" for v in xy.ravel()]))
        Image.fromarray(np.full((40, 40), 50 + i, np.uint8)).save(root / "images" / f"{rid}.png")
    (root / "all.csv").write_text("\n".join(rows) + "\n")
    (root / "splits" / "set1.txt").write_text("0001\n0002\n")
    (root / "splits" / "set2.txt").write_text("0003\n0004\n")
    return root


def _hand_data(root: Path, **kw):
    cfg = TrialConfig.from_dict({"data": {"dataset": "hand", "root": str(root), "num_landmarks": 37, **kw}})
    return cfg.data


def test_hand_problems_name_the_split_keys_and_list_valid_splits(tmp_path):
    root = make_hand(tmp_path / "hand")
    out = problems(_hand_data(root, train_split="set7", val_split="set1+fold2"))
    assert out == [
        "data.train_split: unknown split 'set7'; valid splits: all, set1, set2 (or distinct split-file names joined by '+', e.g. 'set2+set3')",
        "data.val_split: unknown split 'set1+fold2'; valid splits: all, set1, set2 (or distinct split-file names joined by '+', e.g. 'set2+set3')",
    ]
    data = _hand_data(root, train_split="set1+set2", val_split="set2")
    assert problems(data) == []
    assert [r.id for r in DATASETS["hand"].records(data, "set1+set2")] == ["0001", "0002", "0003", "0004"]


@pytest.mark.parametrize("split", ["set1+set1", "all+set1"])
def test_hand_problems_agree_with_the_loader_on_joined_splits(tmp_path, split):
    # problems() is the check run before any trial: a split it passes must load. hand.load_split
    # refuses a repeated stem and "all" inside a join (ValueError); data._splits_problems checks
    # each "+" part against split_names() alone, so both pass it.
    root = make_hand(tmp_path / "hand")
    data = _hand_data(root, train_split=split, val_split="set2")
    try:
        DATASETS["hand"].records(data, split)
        loads = True
    except ValueError:
        loads = False
    assert loads or problems(data), f"{split!r}: problems() says [] but records() raises"


def test_300w_problems_name_the_split_keys(tmp_path):
    data = dataclasses.replace(
        TrialConfig().data, dataset="300w", num_landmarks=68, root=str(tmp_path), train_split="afw", val_split="common"
    )
    out = problems(data)
    assert (
        out[0]
        == "data.train_split: unknown split 'afw'; choose one of ['train', 'common', 'challenging', 'full', 'test']"
    )
    assert not any(p.startswith("data.val_split") for p in out)
