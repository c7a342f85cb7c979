"""Landmark records -> tensors at the network's input size.

Images are decoded, cropped and resized once per (files, crop boxes, size) and kept in an
on-disk cache (trainables/data/cache.py) shared by every trial on a node, then held in memory,
so an epoch never re-decodes a full-size BMP. Coordinates follow the convention in
trainables/heatmaps.py: pixel centres at integers.

A record's frame maps original pixels to input pixels. The visible box (x0, y0, x1, y1) (the
record's crop, or the whole image (-0.5, -0.5, W0 - 0.5, H0 - 0.5): pixel edges) is stretched
onto the input's W × H pixels, so x_in = (x - x0)·W/(x1 - x0) - 0.5 and back
x = (x_in + 0.5)·(x1 - x0)/W + x0. Parts of a crop outside the image are black.

    ds = LandmarkDataset(records, input_size=(128, 104))
    image, coords, frame, spacing = ds[0]   # (1, H, W) uint8, (K, 2) input px (NaN = missing), (4,), ()
    x = normalize(image.to(device))         # (1, H, W) float32 network input, converted on the device
    to_original(coords, frame)              # (K, 2) original pixels

Images stay uint8 in memory (a quarter of float32's: 150 ISBI images at 800×640 are 77 MB, not
307 MB) and cross to the device as uint8; `normalize` makes them floats there.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from trainables.data.cache import cached_arrays
from trainables.data.record import DatasetFormatError, Record, read_image

# 8-bit grey levels -> roughly zero-mean, unit-spread inputs for a network trained from scratch.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25
CACHE_VERSION = 1  # bump when the decoding or resizing below changes


def normalize(pixels: Tensor) -> Tensor:
    """uint8 grey levels (any shape) -> float32 network input (x/255 − PIXEL_MEAN)/PIXEL_STD, on their device."""
    return (pixels.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


def to_original(coords: Tensor, frame: Tensor) -> Tensor:
    """Input-pixel (…, K, 2) -> original-image pixels, frame (…, 4) = (x scale, y scale, x0, y0)."""
    return (coords + 0.5) * frame[..., None, :2] + frame[..., None, 2:]


def visible_box(rec: Record, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the region the network sees, in the record's pixel coordinates (edges)."""
    h0, w0 = shape
    return rec.crop if rec.crop is not None else (-0.5, -0.5, w0 - 0.5, h0 - 0.5)


def crop_resize(raw: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """(H0, W0) uint8, box (x0, y0, x1, y1) in pixel-centre coordinates, (H, W) -> (H, W) float32 in [0, 255].

    Antialiased (PIL's bilinear resize over the box); a box beyond the image is padded with black.
    """
    h, w = size
    h0, w0 = raw.shape
    # PIL's box is in edge coordinates: pixel j spans [j, j + 1].
    left, top, right, bottom = box[0] + 0.5, box[1] + 0.5, box[2] + 0.5, box[3] + 0.5
    pad = [
        max(0, int(np.ceil(-top))),
        max(0, int(np.ceil(bottom - h0))),
        max(0, int(np.ceil(-left))),
        max(0, int(np.ceil(right - w0))),
    ]
    if any(pad):
        raw = np.pad(raw, ((pad[0], pad[1]), (pad[2], pad[3])))
        left, right, top, bottom = left + pad[2], right + pad[2], top + pad[0], bottom + pad[0]
    image = Image.fromarray(raw).resize((w, h), Image.BILINEAR, box=(left, top, right, bottom))
    return np.asarray(image, dtype=np.float32)


class LandmarkDataset(Dataset):
    def __init__(
        self,
        records: Sequence[Record],
        input_size: tuple[int, int],
        reader: Callable[[Path], np.ndarray] = read_image,
        cache_dir: Path | None = None,
        name: str = "",
    ):
        """records -> tensors at input_size (H, W); cache_dir None decodes without caching; name labels the cache."""
        h, w = input_size
        self.records = list(records)
        if not self.records:
            raise ValueError(f"{name or 'dataset'}: no images")
        build = lambda: _decode_all(self.records, (h, w), reader, name)  # noqa: E731
        if cache_dir is None:
            arrays = build()
        else:
            arrays = cached_arrays(Path(cache_dir), _cache_key(self.records, (h, w), name), build)
        boxes = torch.from_numpy(arrays["boxes"])  # (N, 4) float64 visible boxes
        scale = (boxes[:, 2:] - boxes[:, :2]) / torch.tensor([w, h], dtype=torch.float64)  # input px -> original px
        landmarks = torch.from_numpy(np.stack([r.landmarks for r in self.records]))  # (N, K, 2) float64
        self.images = torch.from_numpy(arrays["images"].astype(np.uint8, copy=False))[:, None]  # (N, 1, H, W) uint8
        self.coords = ((landmarks - boxes[:, None, :2]) / scale[:, None] - 0.5).float()  # (N, K, 2) input px
        self.frames = torch.cat([scale, boxes[:, :2]], dim=1).float()  # (N, 4)
        self.spacing = torch.tensor([r.spacing_mm for r in self.records], dtype=torch.float32)  # (N,)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.images[i], self.coords[i], self.frames[i], self.spacing[i]


def _decode_all(records: list[Record], size: tuple[int, int], reader, name: str) -> dict[str, np.ndarray]:
    if len(records) > 20:  # decoding full-size X-rays takes a while; say what is happening
        print(
            f"{name or 'dataset'}: decoding {len(records)} images to {size[0]}×{size[1]} (cached for later trials)",
            file=sys.stderr,
            flush=True,
        )
    images, boxes = [], []
    for rec in records:
        raw = reader(rec.image_path)
        box = visible_box(rec, raw.shape)
        images.append(np.rint(crop_resize(raw, box, size)).astype(np.uint8))
        boxes.append(box)
    return {"images": np.stack(images), "boxes": np.asarray(boxes, dtype=np.float64)}


def _cache_key(records: list[Record], size: tuple[int, int], name: str) -> dict:
    """What the cached arrays depend on: each file's identity (path, size, mtime) and crop, and the size."""
    h = hashlib.sha1()
    for rec in records:
        try:
            st = Path(rec.image_path).stat()
        except FileNotFoundError:
            raise DatasetFormatError(f"{rec.image_path}: image file not found") from None
        h.update(json.dumps([str(Path(rec.image_path).resolve()), st.st_size, st.st_mtime_ns, rec.crop]).encode())
    return {"name": name, "size": list(size), "files": h.hexdigest(), "count": len(records), "version": CACHE_VERSION}
