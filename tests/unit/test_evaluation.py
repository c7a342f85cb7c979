"""Evaluation: the flip test against an oracle model, end-to-end fit() on tiny 300-W and hand fixtures, eval.split."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from trainables import TrialConfig, fit
from trainables.config import apply_overrides
from trainables.data import DatasetSpec
from trainables.data.dataset import PIXEL_MEAN, PIXEL_STD, LandmarkDataset
from trainables.data.record import Record
from trainables.losses import LOSSES
from trainables.metrics import reported_metrics
from trainables.checkpoint import CHECKPOINT_FILE
from trainables.objective import HeadsLoss, Scorer
from trainables.registry import config_problems
from trainables.trainer import load_split


# --- the flip test, against an oracle ---------------------------------------------------------------


class HalvesOracle(nn.Module):
    """Heatmaps read off the image: channel 0 = the image on its left half, channel 1 = on its right half.

    So a blob on the left is landmark 0 and a blob on the right landmark 1. (B, 1, H, W) -> [(B, 2, H, W)].
    `shift` moves both heatmaps that many columns right: a model biased by +shift px in x.
    """

    strides = (1,)

    def __init__(self, shift: int = 0):
        super().__init__()
        self.shift = shift

    def forward(self, x):
        img = x * PIXEL_STD + PIXEL_MEAN  # back to [0, 1]
        left = torch.zeros_like(img)
        left[..., : x.shape[-1] // 2] = 1
        heatmaps = torch.cat([img * left, img * (1 - left)], dim=1)
        return [torch.roll(heatmaps, self.shift, dims=-1)]


H, W = 24, 32
# Per image: blob A (landmark 0) on the left, blob B (landmark 1, brighter) on the right, sub-pixel.
BLOBS = [np.array([[8.3, 10.6], [22.7, 14.2]]), np.array([[5.6, 17.4], [25.2, 6.8]])]


def _gaussian_png(path: Path, centres: np.ndarray, peaks=(200, 250), sigma: float = 1.5) -> Path:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = sum(p * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)) for (cx, cy), p in zip(centres, peaks))
    Image.fromarray(np.rint(img).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def blob_ds(tmp_path) -> LandmarkDataset:
    # Images at the input size, no crop: input pixels are original pixels (frame = (1, 1, -0.5, -0.5)).
    recs = [Record(f"{i}", _gaussian_png(tmp_path / f"{i}.png", c), c, 1.0) for i, c in enumerate(BLOBS)]
    return LandmarkDataset(recs, (H, W))


def _score(ds, model, flip_test: bool, flip_index: list[int]):
    """Run a Scorer, returning (metrics, decoded predictions (N, K, 2), the heatmaps it decoded (N, K, H, W))."""
    cfg = TrialConfig.from_dict(
        {"eval": {"decode": "subpixel", "flip_test": flip_test}, "train": {"batch_size": 2, "device": "cpu"}}
    )
    spec = DatasetSpec(records=lambda c, s: [], problems=lambda c: [], flip_index=lambda k: tuple(flip_index))
    scorer = Scorer(cfg, spec, flip_index, torch.device("cpu"))
    seen_heatmaps, seen_preds = [], []
    decode = scorer.decode

    def spy(heatmaps, stride, sigma):
        seen_heatmaps.append(heatmaps.clone())
        seen_preds.append(decode(heatmaps, stride, sigma))
        return seen_preds[-1]

    scorer.decode = spy
    heads_loss = HeadsLoss(LOSSES["mse"], cfg, (1,))
    metrics, _ = scorer(model, ds, torch.full((2,), 2.0), heads_loss, "val")
    return metrics, torch.cat(seen_preds), torch.cat(seen_heatmaps)


def test_flip_test_with_the_right_flip_map_changes_nothing_for_a_symmetric_oracle(blob_ds):
    truth = torch.tensor(np.stack(BLOBS), dtype=torch.float32)
    plain, pred_plain, hm_plain = _score(blob_ds, HalvesOracle(), False, [1, 0])
    flipped, pred_flip, hm_flip = _score(blob_ds, HalvesOracle(), True, [1, 0])
    # The mirror's channel 1 (its right half), flipped back, is the original's left half: re-indexed
    # by [1, 0] and averaged with channel 0 it gives channel 0 again, exactly.
    torch.testing.assert_close(hm_flip, hm_plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(pred_flip, pred_plain, atol=1e-5, rtol=0)
    assert (pred_plain - truth).norm(dim=-1).max() < 0.1  # subpixel decoding of a uint8 Gaussian
    # spacing 1 mm/px: the MRE is the mean pixel error
    assert plain["val/mre_mm"] < 0.1 and flipped["val/mre_mm"] == pytest.approx(plain["val/mre_mm"], abs=1e-5)


def test_flip_test_without_reindexing_is_wrong(blob_ds):
    truth = torch.tensor(np.stack(BLOBS), dtype=torch.float32)
    wrong, pred, _ = _score(blob_ds, HalvesOracle(), True, [0, 1])
    # Channel 0 becomes (left half + right half)/2 = the whole image / 2: its maximum is the brighter
    # blob B, so landmark 0 is predicted at B's position, 14.4 and 19.8 px from A.
    torch.testing.assert_close(pred[:, 0], truth[:, 1], atol=0.1, rtol=0)
    assert (pred[:, 0] - truth[:, 0]).norm(dim=-1).min() > 10
    assert wrong["val/mre_mm"] > 5


def test_flip_test_cancels_a_horizontal_bias(blob_ds):
    # Shift +1: the plain pass predicts x + 1; the mirror's pass, flipped back, x - 1; the average of
    # the two heatmaps peaks at x (two Gaussians 2 px apart with σ = 1.5 px are one symmetric bump).
    truth = torch.tensor(np.stack(BLOBS), dtype=torch.float32)
    _, plain, _ = _score(blob_ds, HalvesOracle(shift=1), False, [1, 0])
    _, flipped, _ = _score(blob_ds, HalvesOracle(shift=1), True, [1, 0])
    torch.testing.assert_close(plain[..., 0] - truth[..., 0], torch.ones(2, 2), atol=0.1, rtol=0)
    torch.testing.assert_close(flipped, truth, atol=0.25, rtol=0)


# --- end to end: 300-W -----------------------------------------------------------------------------

K_FACE = 68
FACE_FILES = {  # folder -> [(stem, suffix, CRLF?)]
    "afw": [("1_1", ".jpg", True), ("2_1", ".jpg", False)],
    "helen/trainset": [("100_1", ".jpg", True)],
    "lfpw/trainset": [("image_0001", ".png", False)],
    "helen/testset": [("200_1", ".jpg", True)],
    "lfpw/testset": [("image_0002", ".png", False)],
    "ibug": [("image_003_1", ".jpg", True), ("image_004", ".png", False)],
}


def _face_points(rng: np.random.Generator) -> np.ndarray:
    """68 0-based points inside a 40 × 36 image: a ring with jitter, eye corners 36, 45 ~16 px apart."""
    t = np.linspace(0, 2 * np.pi, K_FACE, endpoint=False)
    xy = np.stack([20 + 12 * np.cos(t), 18 + 10 * np.sin(t)], axis=1) + rng.uniform(-1, 1, (K_FACE, 2))
    xy[36], xy[45] = (12.0 + rng.uniform(), 15.0), (28.0 + rng.uniform(), 15.5)
    return xy


def make_300w(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for folder, files in FACE_FILES.items():
        (root / folder).mkdir(parents=True)
        for stem, suffix, crlf in files:
            xy = _face_points(rng)
            img = rng.integers(0, 80, (36, 40, 3), dtype=np.uint8)
            for x, y in xy:
                img[int(round(y)), int(round(x))] = 255
            Image.fromarray(img).save(root / folder / f"{stem}{suffix}")
            lines = ["version: 1", f"n_points: {K_FACE}", "{"] + [f"{x + 1:.3f} {y + 1:.3f}" for x, y in xy] + ["}"]
            nl = "\r\n" if crlf else "\n"
            (root / folder / f"{stem}.pts").write_bytes((nl.join(lines) + nl).encode())
    return root


def test_fit_on_300w_reports_nme_and_writes_the_test_table(tmp_path, recorder):
    root = make_300w(tmp_path / "300w")
    cfg = TrialConfig.from_dict(
        {
            "model": {"name": "unet", "width": 0.125},
            "data": {
                "dataset": "300w",
                "root": str(root),
                "num_landmarks": 68,
                "input_size": [32, 32],
                "train_split": "train",
                "val_split": "common",
                "augment": {"flip": 0.5, "rotate": 10.0},
            },
            "target": {"sigma": 2.0},
            "eval": {"split": "challenging", "flip_test": True, "decode": "subpixel"},
            "train": {"epochs": 2, "batch_size": 2, "seed": 1, "device": "cpu"},
        }
    )
    rec = recorder("kept")
    last = fit(cfg, rec)
    assert [m["epoch"] for m in rec.metrics] == [1, 2] and last == rec.metrics[-1]
    per_landmark = {f"train/loss_lm_{i}" for i in range(68)} | {f"target/sigma_{i}" for i in range(68)}
    assert set(rec.metrics[0]) == set(reported_metrics("nme")) | per_landmark | {"epoch"}
    for m in rec.metrics:
        assert {"val/nme", "val/nme_sd", "val/fr", "val/auc"} <= set(m) and "val/mre_mm" not in m
        assert m["val/nme"] > 0 and math.isfinite(m["val/nme_sd"]) and 0 <= m["val/fr"] <= 100
        assert 0 <= m["val/auc"] <= 1
    test_keys = {"test/loss", "test/nme", "test/nme_sd", "test/fr", "test/auc"}
    assert test_keys <= set(rec.metrics[-1]) and not any(k.startswith("test/") for k in rec.metrics[0])
    assert "test/mre_mm" not in rec.metrics[-1]

    assert not (rec.checkpoints[0] / "test_challenging_per_landmark.txt").exists()
    table = (rec.checkpoints[-1] / "test_challenging_per_landmark.txt").read_text().splitlines()
    assert (rec.checkpoints[-1] / CHECKPOINT_FILE).exists()
    header, rows = table[0].split(), [line.split() for line in table[1:]]
    assert header == ["landmark", "n", "mean", "sd", "median", "max"]
    assert len(rows) == 68 and [int(r[0]) for r in rows] == list(range(68))
    assert all(r[1] == "2" for r in rows)  # two ibug faces, every landmark annotated
    # Every landmark annotated: NME = mean over images of the landmark mean = mean of the column "mean".
    assert np.mean([float(r[2]) for r in rows]) == pytest.approx(last["test/nme"], abs=0.01)


# --- end to end: hand ------------------------------------------------------------------------------

K_HAND = 37
HAND_SPLITS = {"set1": ["0001", "0002"], "set2": ["0003", "0004"], "set3": ["0005", "0006"]}
# Ruler landmarks 0 and 4 of image 0005: (6, 20) and (30, 27), 25 px apart (24² + 7² = 625), so
# spacing_mm = 50 / 25 = 2.0. Image 0006 lacks landmark 10 (nan in all.csv).
RULER_0005 = ((6.0, 20.0), (30.0, 27.0))


def make_hand(root: Path) -> Path:
    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    rows = []
    for ids in HAND_SPLITS.values():
        for rid in ids:
            xy = rng.uniform(3, 37, (K_HAND, 2))
            if rid == "0005":
                xy[0], xy[4] = RULER_0005
            cells = [f"{v:.2f}" for v in xy.ravel()]
            if rid == "0006":
                cells[2 * 10] = "nan"
            rows.append(",".join([rid] + cells))
            img = rng.integers(0, 60, (40, 40), dtype=np.uint8)
            for x, y in xy:
                img[int(y), int(x)] = 255
            Image.fromarray(img).save(root / "images" / f"{rid}.png")
    (root / "all.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    for name, ids in HAND_SPLITS.items():
        (root / "splits" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


def _hand_config(root: Path, **overrides) -> TrialConfig:
    d = {
        "model": {"name": "unet", "width": 0.125},
        "data": {
            "dataset": "hand",
            "root": str(root),
            "num_landmarks": 37,
            "input_size": [32, 32],
            "train_split": "set1+set2",
            "val_split": "set3",
        },
        "target": {"sigma": 2.0},
        "eval": {"split": "set3"},
        "train": {"epochs": 2, "batch_size": 2, "seed": 1, "device": "cpu"},
    }
    return TrialConfig.from_dict(apply_overrides(d, overrides))


def test_fit_on_hand_reports_mm_through_the_ruler_spacing(tmp_path, recorder):
    root = make_hand(tmp_path / "hand")
    cfg = _hand_config(root)
    assert config_problems(cfg) == []
    val = load_split(cfg, "set3")
    assert val.spacing[0].item() == pytest.approx(2.0)  # 50 mm / 25 px, by hand above
    assert torch.isnan(val.coords[1, 10]).all() and torch.isfinite(val.coords[0]).all()

    rec = recorder("kept")
    fit(cfg, rec)
    for m in rec.metrics:
        assert math.isfinite(m["val/mre_mm"]) and m["val/mre_mm"] > 0 and "val/nme" not in m
    assert math.isfinite(rec.metrics[-1]["test/mre_mm"])
    rows = [line.split() for line in (rec.checkpoints[-1] / "test_set3_per_landmark.txt").read_text().splitlines()[1:]]
    assert len(rows) == 37
    assert [r[1] for r in rows] == ["2"] * 10 + ["1"] + ["2"] * 26  # landmark 10 is missing in one image
    # MRE over the 73 finite landmark errors = the n-weighted mean of the per-landmark means.
    n, mean = np.array([float(r[1]) for r in rows]), np.array([float(r[2]) for r in rows])
    assert (n * mean).sum() / n.sum() == pytest.approx(rec.metrics[-1]["test/mre_mm"], abs=0.01)


# --- config_problems and eval.split -----------------------------------------------------------------


def test_config_problems_name_an_unknown_eval_split(tiny_config, tmp_path):
    cfg = TrialConfig.from_dict(apply_overrides(tiny_config, {"eval.split": "test3"}))
    assert config_problems(cfg) == ["eval.split: unknown split 'test3'; choose one of ['train', 'test1', 'test2']"]
    assert config_problems(TrialConfig.from_dict(apply_overrides(tiny_config, {"eval.split": ""}))) == []

    hand_cfg = _hand_config(make_hand(tmp_path / "hand"), **{"eval.split": "set9"})
    assert config_problems(hand_cfg) == [
        "eval.split: unknown split 'set9'; valid splits: all, set1, set2, set3 (or distinct split-file names joined by '+', e.g. 'set2+set3')"
    ]
    assert config_problems(_hand_config(tmp_path / "hand", **{"eval.split": "set1+set3"})) == []

    face = TrialConfig.from_dict(
        {
            "data": {
                "dataset": "300w",
                "root": str(make_300w(tmp_path / "300w")),
                "num_landmarks": 68,
                "train_split": "train",
                "val_split": "common",
            },
            "eval": {"split": "ibug"},
        }
    )
    assert config_problems(face) == [
        "eval.split: unknown split 'ibug'; choose one of ['train', 'common', 'challenging', 'full', 'test']"
    ]
    # The private test set is optional on disk; as eval.split its missing folders are named.
    face_test = TrialConfig.from_dict(apply_overrides(face.to_dict(), {"eval.split": "test"}))
    out = config_problems(face_test)
    assert len(out) == 2 and all(p.startswith("eval.split: ") for p in out)
    assert "01_Indoor" in out[0] and "02_Outdoor" in out[1]


# --- end to end: faces cut by the photo's border (issue 28) ------------------------------------------


def test_fit_on_faces_cut_by_the_frame_trains_and_scores_all_68_points(tmp_path, recorder):
    from trainables.data import problems as data_problems
    from trainables.heatmaps import on_map
    from trainables.problems import Problem

    # The fixture's faces moved 15 px right: x = 35 ± 12 on a 40-wide image, so each face's right side
    # (about a third of its points) lies past the image's right edge, 39.5.
    root = make_300w(tmp_path / "300w")
    for pts in root.rglob("*.pts"):
        lines = pts.read_text().splitlines()
        lines[3 : 3 + K_FACE] = [
            f"{float(x) + 15:.3f} {y}" for x, y in (line.split() for line in lines[3 : 3 + K_FACE])
        ]
        pts.write_text("\n".join(lines) + "\n")
    # crop_scale 0.6: the crop is 0.6 × the face's 24 px width = 14.4 px, landmark 0 (the face's rightmost,
    # 12 px right of its centre) lies 12 - 7.2 = 4.8 px beyond the crop, 4.8 × 32 / 14.4 = 10.7 input px
    # past the map, more than 3σ = 3: its target misses the map in every image, every epoch.
    cfg = TrialConfig.from_dict(
        {
            "model": {"name": "unet", "width": 0.125},
            "data": {
                "dataset": "300w",
                "root": str(root),
                "num_landmarks": 68,
                "input_size": [32, 32],
                "train_split": "train",
                "val_split": "common",
                "face": {"crop_scale": 0.6},
            },
            "target": {"schedule": "adaloss", "adaloss": {"window": 2, "sigma0": 1.0, "min_sigma": 0.5}},
            "eval": {"split": "challenging"},
            "train": {"epochs": 4, "batch_size": 2, "seed": 1, "device": "cpu"},
        }
    )
    (note,) = data_problems(cfg.data)
    assert Problem.of(note).kind == Problem.NOTE and "annotation files lie outside their image" in note
    assert config_problems(cfg) == []  # a note stops no trial

    # The landmarks whose σ = 1 target misses the 32×32 map in every training image (the crop cuts the
    # face on all sides): landmark 0 among them, as worked out above, and not all 68.
    never = ~on_map(load_split(cfg, "train").coords, torch.tensor([1.0]), (32, 32)).any(dim=0)  # (68,)
    assert never[0] and 0 < int(never.sum()) < 68

    rec = recorder("kept")
    last = fit(cfg, rec)
    for m in rec.metrics:
        assert math.isfinite(m["train/loss"]) and math.isfinite(m["val/nme"])
        nan = [math.isnan(m[f"train/loss_lm_{k}"]) for k in range(68)]  # no target all epoch: no loss, not 0
        if m["epoch"] <= 3:  # σ = 1 for every landmark until Adaloss's first update (w + 1 = 3 epochs)
            assert nan == never.tolist()
        assert all(nan[k] for k in range(68) if never[k])
        assert all(m[f"target/sigma_{k}"] == 1.0 for k in range(68) if never[k])  # Adaloss skipped them: σ0 stays
        # train/loss is the mean over the landmarks that had a target
        finite = [m[f"train/loss_lm_{k}"] for k in range(68) if not nan[k]]
        assert m["train/loss"] == pytest.approx(sum(finite) / len(finite), rel=1e-5)
    # Adaloss ran for the others: after w + 1 = 3 epochs of losses, epoch 4 trains with a new σ somewhere.
    assert any(rec.metrics[3][f"target/sigma_{k}"] != 1.0 for k in range(68) if not never[k])

    # The 300-W protocol scores all 68 points, those outside the image and outside the crop included.
    rows = [
        line.split()
        for line in (rec.checkpoints[-1] / "test_challenging_per_landmark.txt").read_text().splitlines()[1:]
    ]
    assert len(rows) == 68 and all(r[1] == "2" for r in rows)  # two ibug faces, 68 finite errors each
    assert np.mean([float(r[2]) for r in rows]) == pytest.approx(last["test/nme"], abs=0.01)
