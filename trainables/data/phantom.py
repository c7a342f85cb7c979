"""Synthetic cephalometric-like phantom dataset, written in the ISBI 2015 layout.

Lets the whole pipeline (data loading, training, evaluation) run in seconds without the real
X-rays. Each image is a lateral "skull" seen from the left, face looking right: a smooth
background, a soft-tissue silhouette, bright bone contours drawn through chains of landmarks
(skull vault, cranial base, mandible, palate, teeth, orbit, ear rod), a small marker at each
landmark whose orientation and elongation differ per landmark index, and pixel noise.
Landmark geometry = fixed mean shape -> random global affine -> per-landmark jitter. Two
simulated doctors annotate the true positions with Gaussian noise, rounded to pixels.

Usage:

    python -m trainables.data.phantom /tmp/phantom                     # default config
    python -m trainables.data.phantom /tmp/tiny --num-train 4 --num-test1 2 --num-test2 2 --size 96 80

    from trainables.data import phantom, isbi2015
    root = phantom.ensure(Path("/tmp/phantom"))    # generates once, reuses afterwards
    records = isbi2015.load_split(root, "train")

Same config -> byte-identical files (every image draws from its own RNG seeded by (seed, id)).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .isbi2015 import ANNOTATOR_DIRS, SPACING_MM, SPLIT_DIRS

GENERATOR_VERSION = 1  # bump when the rendering changes, so stale cached phantoms are rejected


@dataclass
class PhantomConfig:
    num_train: int = 32  # enough for a model to learn something, small enough to generate in ~1 s
    num_test1: int = 8
    num_test2: int = 8
    image_size: tuple[int, int] = (480, 388)  # (H, W) pixels at 0.1 mm/px: the ISBI aspect ratio, 1/5 of the size
    num_landmarks: int = 19  # the ISBI 2015 set; other K use the first K of a longer list
    senior_noise_px: float = 1.0  # annotation noise std of the "senior doctor", pixels
    junior_noise_px: float = 2.0  # the "junior doctor" is noisier, as in the real data
    noise_spread: float = 0.0  # landmark k's noise is scaled by 1 + spread·k/(K−1): later landmarks are harder
    seed: int = 0


# Mean shape: normalised (x, y) in [0, 1]^2 of the image (x right, y down), face looking right.
# The first 19 follow the ISBI 2015 order, positions roughly read off a typical ISBI image.
_NAMED_LANDMARKS = [
    ("sella", 0.432, 0.415),
    ("nasion", 0.761, 0.429),
    ("orbitale", 0.667, 0.533),
    ("porion", 0.312, 0.512),
    ("subspinale (A point)", 0.729, 0.673),
    ("supramentale (B point)", 0.717, 0.840),
    ("pogonion", 0.711, 0.894),
    ("menton", 0.682, 0.924),
    ("gnathion", 0.703, 0.914),
    ("gonion", 0.386, 0.781),
    ("lower incisal incision", 0.748, 0.742),
    ("upper incisal incision", 0.762, 0.756),
    ("upper lip", 0.817, 0.717),
    ("lower lip", 0.809, 0.794),
    ("subnasale", 0.804, 0.661),
    ("soft tissue pogonion", 0.780, 0.896),
    ("posterior nasal spine", 0.514, 0.655),
    ("anterior nasal spine", 0.767, 0.646),
    ("articulare", 0.358, 0.636),
    # extension for num_landmarks > 19
    ("basion", 0.335, 0.615),
    ("pronasale", 0.870, 0.600),
    ("soft tissue nasion", 0.800, 0.420),
    ("soft tissue menton", 0.690, 0.965),
    ("condylion", 0.370, 0.580),
    ("glabella", 0.790, 0.370),
    ("vertex", 0.500, 0.070),
    ("opisthocranion", 0.090, 0.330),
    ("upper molar", 0.620, 0.745),
    ("lower molar", 0.610, 0.785),
    ("hyoid", 0.520, 0.940),
]
LANDMARK_NAMES = tuple(name for name, _, _ in _NAMED_LANDMARKS)
(S, N, OR, PO, A, B, POG, ME, GN, GO, L1, U1, UL, LL, SN, SPOG, PNS, ANS, AR) = range(19)


def mean_shape(num_landmarks: int = 19) -> np.ndarray:
    """(K, 2) float64 normalised (x, y); beyond the named list, fixed pseudo-random points inside the head."""
    named = np.array([(x, y) for _, x, y in _NAMED_LANDMARKS], dtype=np.float64)
    if num_landmarks <= len(named):
        return named[:num_landmarks].copy()
    extra = np.random.default_rng(20150).uniform((0.25, 0.25), (0.80, 0.90), (num_landmarks - len(named), 2))
    return np.concatenate([named, extra])


def _check(cfg: PhantomConfig) -> None:
    counts = (cfg.num_train, cfg.num_test1, cfg.num_test2)
    if min(counts) < 0 or sum(counts) < 1:
        raise ValueError(f"phantom: image counts must be >= 0 with at least one image, got {counts}")
    if sum(counts) > 999:
        raise ValueError(f"phantom: at most 999 images (ids are 3 digits), got {sum(counts)}")
    h, w = cfg.image_size
    if min(h, w) < 32:
        raise ValueError(f"phantom: image_size (H, W) must be at least 32x32, got {cfg.image_size}")
    if cfg.num_landmarks < 1:
        raise ValueError(f"phantom: num_landmarks must be >= 1, got {cfg.num_landmarks}")
    if cfg.senior_noise_px < 0 or cfg.junior_noise_px < 0 or cfg.noise_spread < 0:
        raise ValueError("phantom: annotation noise and noise_spread must be >= 0")


# ----------------------------------------------------------------------------- rendering


def _spline(points: np.ndarray, per_segment: int = 8) -> np.ndarray:
    """Catmull-Rom curve through (P, 2) points -> (M, 2) points, so bone contours are smooth."""
    p = np.concatenate([points[:1], points, points[-1:]])  # repeat ends: the curve hits the first/last point
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
        )
    out.append(points[-1:])
    return np.concatenate(out)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """(H, W) float32, roughly unit-std, smooth random field from a coarse (cells) grid upsampled bicubically."""
    coarse = rng.standard_normal(cells).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize(shape[::-1], Image.BICUBIC))  # float32 -> mode "F"


def _render(cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One phantom image -> ((H, W) uint8 image, (K, 2) float64 true landmark (x, y) pixels)."""
    H, W = cfg.image_size
    K = cfg.num_landmarks
    wh = np.array([W, H], dtype=np.float64)
    u = min(H, W) / 100.0  # drawing unit: 1% of the short side (3.9 px at the default size)

    # geometry: mean shape -> global affine (about the image centre) -> per-landmark jitter.
    # All 19 ISBI points are always simulated (the bone contours need them); the first K are the landmarks.
    angle = math.radians(rng.uniform(-6.0, 6.0))
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.04, 0.04, 2) * wh
    M = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def warp(norm_xy) -> np.ndarray:  # normalised (..., 2) -> pixels, global affine only
        return (np.asarray(norm_xy) * wh - wh / 2) @ M.T + wh / 2 + shift

    def off(p, dx, dy) -> np.ndarray:  # point p moved by a normalised offset in the head's frame
        return p + M @ (np.array([dx, dy]) * wh)

    pts = warp(mean_shape(max(K, 19))) + rng.normal(0.0, 0.015 * min(H, W), (max(K, 19), 2))
    pts = np.clip(pts, 2.0, wh - 3.0)  # keep every landmark (and its marker centre) inside the image
    P = pts  # short alias for the drawing code below

    def ellipse(c, rx, ry, t0=0.0, t1=360.0, n=48) -> np.ndarray:  # c normalised; angles in degrees, y down
        t = np.radians(np.linspace(t0, t1, n))[:, None]
        return warp(np.asarray(c) + np.concatenate([rx * np.cos(t), ry * np.sin(t)], axis=1))

    def around(p, rx, ry, t0=0.0, t1=360.0, n=24) -> np.ndarray:  # ellipse around pixel point p, radii normalised
        t = np.radians(np.linspace(t0, t1, n))[:, None]
        return p + (np.concatenate([rx * np.cos(t), ry * np.sin(t)], axis=1) * wh) @ M.T

    def flat(xy: np.ndarray) -> list[float]:
        return xy.reshape(-1).tolist()

    # soft tissue: head silhouette = back of the skull + facial profile through the soft-tissue landmarks
    soft = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(soft)
    back = ellipse((0.44, 0.36), 0.41, 0.37, -235.0, -15.0)  # occiput -> top -> forehead
    profile = np.stack(
        [
            off(P[N], 0.035, -0.01),  # soft-tissue nasion
            off(P[SN], 0.065, -0.045),  # nose tip
            P[SN],
            P[UL],
            (P[UL] + P[LL]) / 2 + M @ np.array([-0.01 * W, 0.0]),  # stomion
            P[LL],
            off(P[B], 0.045, 0.0),  # labiomental fold
            P[SPOG],
            off(P[ME], 0.01, 0.045),  # soft-tissue menton
            off(P[ME], -0.12, 0.07),  # throat
        ]
    )
    neck = warp([(0.58, 1.2), (0.05, 1.2), (0.10, 0.75)])
    d.polygon(flat(np.concatenate([_spline(profile, 6), neck, back])), fill=255)

    # bone: bright cortical contours through the landmark chains
    bone = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(bone)
    w1, w2, w3 = max(1, round(0.6 * u)), max(1, round(1.2 * u)), max(2, round(2.2 * u))

    def line(xy, fill=255, width=w2):
        d.line(flat(xy), fill=fill, width=width, joint="curve")

    line(ellipse((0.44, 0.36), 0.37, 0.33, 15.0, -220.0), fill=150, width=3 * w2)  # vault diploe
    line(ellipse((0.44, 0.36), 0.375, 0.335, 15.0, -220.0), width=w2)  # outer table
    line(ellipse((0.44, 0.36), 0.355, 0.315, 12.0, -218.0), width=w1)  # inner table
    line(_spline(np.stack([off(P[S], 0.035, -0.012), off(P[S], 0.15, 0.0), off(P[N], -0.03, 0.0), P[N]])))
    line(_spline(np.stack([off(P[AR], -0.02, -0.03), off(P[S], -0.05, 0.05), off(P[S], -0.03, 0.0)])))
    line(around(P[S], 0.028, 0.025, -10.0, 190.0), width=w2)  # sella turcica: a cup open upwards
    line(_spline(np.stack([P[N], off(P[N], 0.03, 0.05), off(P[N], 0.045, 0.09)])), width=w1)  # nasal bone
    line(around(off(P[OR], 0.0, -0.04), 0.05, 0.04), width=w1)  # orbit, orbitale at its lowest point
    line(around(off(P[PO], 0.0, 0.02), 0.025, 0.02), width=w3)  # ear rod ring, porion at its top
    line(_spline(np.stack([P[PNS], (P[PNS] + P[ANS]) / 2 + M @ np.array([0.0, 0.012 * H]), P[ANS]])), width=w3)
    line(_spline(np.stack([P[ANS], P[A], off(P[U1], -0.012, -0.04), P[U1]])))  # maxillary alveolus
    line(np.stack([P[U1], off(P[U1], -0.035, -0.075)]), width=w3)  # upper incisor
    line(np.stack([P[L1], off(P[L1], -0.045, 0.075)]), width=w3)  # lower incisor
    for c in (off(P[PNS], 0.09, 0.085), off(P[PNS], 0.05, 0.085)):  # molars
        d.ellipse([c[0] - 2.2 * u, c[1] - 3 * u, c[0] + 2.2 * u, c[1] + 3 * u], fill=200)
    mandible = np.stack([off(P[AR], 0.012, -0.06), P[AR], P[GO], P[ME], P[GN], P[POG], P[B], P[L1]])
    line(_spline(mandible), width=w3)
    line(_spline(np.stack([P[ME], off(P[POG], -0.045, -0.01), off(P[B], -0.03, -0.02)])), width=w1)  # symphysis
    for i in range(3):  # cervical vertebrae
        c = warp((0.28, 0.72 + 0.1 * i))
        d.ellipse([c[0] - 4.5 * u, c[1] - 3.5 * u, c[0] + 4.5 * u, c[1] + 3.5 * u], fill=130)

    blur = ImageFilter.GaussianBlur(radius=max(0.6, 0.35 * u))
    soft_a = np.asarray(soft.filter(ImageFilter.GaussianBlur(radius=0.6 * u)), dtype=np.float32) / 255
    bone_a = np.asarray(bone.filter(blur), dtype=np.float32) / 255

    img = 18.0 + 8.0 * _smooth_noise(rng, (H, W), (5, 4))  # air/background, low-frequency exposure variation
    img += soft_a * (60.0 + 10.0 * _smooth_noise(rng, (H, W), (12, 10)))  # soft tissue with texture
    img += bone_a * (105.0 + 12.0 * _smooth_noise(rng, (H, W), (16, 13)))  # bone

    # landmark markers: an elongated Gaussian centred exactly on the landmark plus a "tail" blob on one
    # side, inside a dark halo so they stand out on bone too; orientation (golden-angle steps) and
    # elongation differ per index, and turn with the head
    s0 = max(1.0, 0.6 * u)
    alpha = np.zeros((H, W), dtype=np.float32)
    halo = np.zeros((H, W), dtype=np.float32)
    r = int(math.ceil(7 * s0)) + 2
    for k in range(K):
        x0, y0 = pts[k]
        theta = angle + 2 * math.pi * ((k * 0.6180339887) % 1.0)
        elong = 1.0 + 0.5 * (k % 3)
        i0, i1 = max(0, int(y0) - r), min(H, int(y0) + r + 1)
        j0, j1 = max(0, int(x0) - r), min(W, int(x0) + r + 1)
        dx, dy = np.arange(j0, j1)[None, :] - x0, np.arange(i0, i1)[:, None] - y0  # pixel centres at integers
        along = dx * math.cos(theta) + dy * math.sin(theta)
        across = -dx * math.sin(theta) + dy * math.cos(theta)
        main = np.exp(-0.5 * ((along / (elong * s0)) ** 2 + (across / s0) ** 2))
        tail = np.exp(-0.5 * ((along - (elong + 2.2) * s0) ** 2 + across**2) / (0.7 * s0) ** 2)
        np.maximum(alpha[i0:i1, j0:j1], 0.9 * np.maximum(main, 0.8 * tail), out=alpha[i0:i1, j0:j1])
        ring = np.exp(-0.5 * (dx**2 + dy**2) / ((elong + 2.5) * s0) ** 2)
        np.maximum(halo[i0:i1, j0:j1], 0.4 * ring, out=halo[i0:i1, j0:j1])
    img *= 1 - halo  # darken around the marker ...
    img = img * (1 - alpha) + 250.0 * alpha  # ... then blend towards white: visible on air, tissue and bone

    img += rng.normal(0.0, 3.0, (H, W))  # mild pixel (quantum) noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), pts[:K].copy()


# ----------------------------------------------------------------------------- dataset on disk


def _ids(cfg: PhantomConfig) -> dict[str, list[str]]:
    """split -> ids; ids run consecutively train, test1, test2 from 001."""
    out, n = {}, 0
    for split, count in (("train", cfg.num_train), ("test1", cfg.num_test1), ("test2", cfg.num_test2)):
        out[split] = [f"{n + i + 1:03d}" for i in range(count)]
        n += count
    return out


def _config_dict(cfg: PhantomConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["image_size"] = list(cfg.image_size)
    return d


def _write_dataset(out: Path, cfg: PhantomConfig) -> None:
    """Write the whole dataset into the (empty, existing) folder `out`."""
    H, W = cfg.image_size
    # Per-landmark noise (K, 1): with noise_spread 0 every landmark gets the doctor's noise as before.
    spread = 1.0 + cfg.noise_spread * np.linspace(0.0, 1.0, cfg.num_landmarks)[:, None]
    noise = {"senior": cfg.senior_noise_px * spread, "junior": cfg.junior_noise_px * spread}
    for d in ANNOTATOR_DIRS.values():
        (out / "AnnotationsByMD" / d).mkdir(parents=True)
    truth = {}
    ids = _ids(cfg)
    for split, split_ids in ids.items():
        image_dir = out / "RawImage" / SPLIT_DIRS[split]
        image_dir.mkdir(parents=True)
        for rid in split_ids:
            rng = np.random.default_rng([cfg.seed, int(rid)])  # per image: independent of the split sizes
            image, true = _render(cfg, rng)
            Image.fromarray(image).save(image_dir / f"{rid}.bmp", format="BMP")  # 8-bit grayscale-palette BMP
            for doctor, sigma in noise.items():
                ann = np.rint(true + rng.normal(0.0, 1.0, true.shape) * sigma)
                ann = np.clip(ann, 0, [W - 1, H - 1]).astype(int)
                lines = [f"{x},{y}" for x, y in ann] + ["1", "2"]  # real files end with other class labels
                text = "\r\n".join(lines) + "\r\n"  # CRLF, like the real files
                (out / "AnnotationsByMD" / ANNOTATOR_DIRS[doctor] / f"{rid}.txt").write_bytes(text.encode())
            truth[rid] = true.tolist()
    meta = {
        "generator": "trainables.data.phantom",
        "generator_version": GENERATOR_VERSION,
        "config": _config_dict(cfg),
        "spacing_mm": SPACING_MM,
        "landmark_names": list(LANDMARK_NAMES[: cfg.num_landmarks]),
        "splits": ids,
        "true_landmarks": truth,  # id -> K x [x, y] float pixels, before annotation noise
    }
    (out / "phantom.json").write_text(json.dumps(meta, indent=1) + "\n")


def _mismatch(root: Path, cfg: PhantomConfig) -> str | None:
    """None if root holds a phantom of exactly cfg, else a message saying what differs."""
    meta_path = root / "phantom.json"
    if not meta_path.is_file():
        return f"{root} exists but has no phantom.json (not a phantom dataset, or not written by this module)"
    try:
        meta = json.loads(meta_path.read_text())
        have = dict(meta["config"])
        version = meta.get("generator_version")
    except (ValueError, KeyError, TypeError) as e:
        return f"{meta_path}: unreadable phantom metadata ({e})"
    want = _config_dict(cfg)
    diffs = [f"{k}: on disk {have.get(k)!r}, requested {v!r}" for k, v in want.items() if have.get(k) != v]
    if version != GENERATOR_VERSION:
        diffs.append(f"generator_version: on disk {version!r}, this code {GENERATOR_VERSION}")
    if diffs:
        return f"{root} holds a phantom with a different config ({'; '.join(diffs)}); delete it or use another folder"
    return None


def _occupied(root: Path) -> bool:
    """root exists and is not an empty folder (an empty one is simply replaced by the rename)."""
    return root.exists() and not (root.is_dir() and not any(root.iterdir()))


def generate(root: Path, cfg: PhantomConfig = PhantomConfig()) -> Path:
    """Write the whole dataset to root atomically and return root.

    Builds in a temporary sibling folder, then renames it onto root, so root is either absent or
    complete. If root already exists (before we start, or because another process won the race
    while we were building) the existing one is kept and ours deleted, provided it holds the same
    config (else ValueError). An empty root folder counts as absent.
    """
    _check(cfg)
    root = Path(root)
    if _occupied(root):  # nothing to build: same outcome as building and losing the race, minus the work
        problem = _mismatch(root, cfg)
        if problem:
            raise ValueError(problem)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the published dataset should be readable by all
        _write_dataset(tmp, cfg)
        try:
            os.rename(tmp, root)  # atomic on one filesystem; fails if root appeared and is non-empty
        except OSError:
            if not root.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    problem = _mismatch(root, cfg)
    if problem:
        raise ValueError(problem)
    return root


def ensure(root: Path, cfg: PhantomConfig = PhantomConfig()) -> Path:
    """Return root if it holds a phantom of exactly cfg; generate it if absent; ValueError if it differs.

    The same as `generate`, which already keeps an existing phantom of the same config: the name
    says what a loader wants."""
    return generate(root, cfg)


def true_landmarks(root: Path) -> dict[str, np.ndarray]:
    """id -> (K, 2) float64 true (un-noised) landmark (x, y) pixels, read from ROOT/phantom.json."""
    meta_path = Path(root) / "phantom.json"
    try:
        meta = json.loads(meta_path.read_text())
        return {rid: np.asarray(xy, dtype=np.float64) for rid, xy in meta["true_landmarks"].items()}
    except FileNotFoundError:
        raise ValueError(f"{meta_path}: not found (is {root} a phantom dataset?)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: unreadable phantom metadata ({e})") from None


def main(argv: list[str] | None = None) -> int:
    default = PhantomConfig()
    p = argparse.ArgumentParser(prog="python -m trainables.data.phantom", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num-train", type=int, default=default.num_train)
    p.add_argument("--num-test1", type=int, default=default.num_test1)
    p.add_argument("--num-test2", type=int, default=default.num_test2)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=list(default.image_size))
    p.add_argument("--landmarks", type=int, default=default.num_landmarks)
    p.add_argument("--seed", type=int, default=default.seed)
    a = p.parse_args(argv)
    cfg = PhantomConfig(
        num_train=a.num_train,
        num_test1=a.num_test1,
        num_test2=a.num_test2,
        image_size=(a.size[0], a.size[1]),
        num_landmarks=a.landmarks,
        seed=a.seed,
    )
    existed = _occupied(a.out_dir)
    t0 = time.perf_counter()
    try:
        root = generate(a.out_dir, cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    what = "already present (same config), kept" if existed else f"wrote in {time.perf_counter() - t0:.2f} s"
    print(
        f"{root}: {what}: {cfg.num_train} train / {cfg.num_test1} test1 / {cfg.num_test2} test2 images, "
        f"{cfg.image_size[0]}x{cfg.image_size[1]} (HxW) px at {SPACING_MM} mm/px, {cfg.num_landmarks} landmarks, "
        f"seed {cfg.seed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
