"""The data check on a full-size ISBI 2015 layout: a first check, then a cached one.

Writes 400 full-size images (1935×2400 8-bit grayscale BMPs, ~4.6 MB each, ~1.9 GB in all) and
800 annotation files into a temporary folder, deleted at the end (no image is ever committed),
then times `isbi2015.check`, the check spec validation and `python -m trainables.data.isbi2015`
run:

  first check     empty header cache: every image's header is read, every annotation parsed
  cached check    a new process's view: the in-memory cache cleared, the cache file read
  warm check      the same process again (spec validation checks once per searched value)

For scale it also decodes a few images in full (what a check by decoding would cost) and
extrapolates to 400. The fixture was just written, so it sits in the OS page cache; a check of a
cold disk reads the same ~1 KB per BMP, a full decode 4.6 MB.

    python benchmarks/data_check.py [--images 400] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.data import checks, isbi2015
from trainables.data.record import read_image

W, H = 1935, 2400  # the ISBI 2015 images


def make_fixture(root: Path, n: int) -> None:
    """n images split 150/150/100 like the real set (scaled), each with two annotation files."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W), dtype=np.uint8)
    root.mkdir(parents=True)
    sample = root / "sample.bmp"
    Image.fromarray(image).save(sample)
    data = sample.read_bytes()
    sample.unlink()
    n1, n2 = round(n * 150 / 400), round(n * 300 / 400)
    for i in range(1, n + 1):
        split = "TrainingData" if i <= n1 else "Test1Data" if i <= n2 else "Test2Data"
        d = root / "RawImage" / split
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.bmp").write_bytes(data)
        for doctor in isbi2015.ANNOTATOR_DIRS.values():
            a = root / "AnnotationsByMD" / doctor
            a.mkdir(parents=True, exist_ok=True)
            xy = rng.integers(0, (W, H), (19, 2))
            lines = [f"{x},{y}" for x, y in xy] + ["1", "2"]
            (a / f"{i:03d}.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--decode", type=int, default=10, help="images decoded in full, for scale")
    p.add_argument("--keep", type=Path, help="write the fixture here and keep it (default: a temporary folder)")
    a = p.parse_args()

    work = a.keep or Path(tempfile.mkdtemp(prefix="data-check-bench-"))
    root, cache = work / "isbi", work / "cache"
    try:
        if not root.exists():
            t, _ = timed(lambda: make_fixture(root, a.images))
            print(f"fixture: wrote in {t:.1f} s")
        files = [f for f in root.rglob("*") if f.is_file()]
        images = sorted(root.rglob("*.bmp"))
        size = sum(f.stat().st_size for f in files)
        print(
            f"fixture: {len(images)} BMPs of {W}×{H} 8-bit + {len(files) - len(images)} annotation files, "
            f"{size / 1e9:.2f} GB, in {root}"
        )

        shutil.rmtree(cache, ignore_errors=True)
        checks.ImageHeaders._memo, checks._parsed = {}, {}
        t_first, problems = timed(lambda: isbi2015.check(root, cache_dir=cache))
        assert problems == [], problems[:3]
        checks.ImageHeaders._memo, checks._parsed = {}, {}  # what a new process starts with: only the cache file
        t_cached, problems = timed(lambda: isbi2015.check(root, cache_dir=cache))
        assert problems == []
        t_warm, _ = timed(lambda: isbi2015.check(root, cache_dir=cache))
        cache_kb = (cache / checks.CACHE_FILE).stat().st_size / 1e3
        k = min(a.decode, len(images))
        t_decode, _ = timed(lambda: [read_image(f) for f in images[:k]])

        print(f"first check:  {t_first:.3f} s ({1e3 * t_first / len(images):.2f} ms per image and its two annotations)")
        print(f"cached check: {t_cached:.3f} s (new process, cache file {cache_kb:.0f} kB)")
        print(f"warm check:   {t_warm:.3f} s (same process)")
        print(
            f"full decode for scale: {t_decode / k:.3f} s per image, {t_decode / k * len(images):.1f} s for "
            f"{len(images)} (measured on {k})"
        )
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
