"""Landmark records -> tensors at the network's input size.

Images are decoded and resized once when the dataset is built and then kept in memory, so an
epoch never re-decodes a full-size BMP. Coordinates follow the convention in
trainables/heatmaps.py: pixel centres at integers, so resizing maps x to (x + 0.5)·W/W0 - 0.5.

    ds = LandmarkDataset(records, input_size=(128, 104))
    image, coords, to_orig, spacing = ds[0]   # (1, H, W), (K, 2) input px, (2,), ()
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from trainables.data.isbi2015 import Record, read_image

# 8-bit grey levels -> roughly zero-mean, unit-spread inputs for a network trained from scratch.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


def resize_coords(coords: Tensor, scale: Tensor) -> Tensor:
    """Map (…, 2) pixel coordinates through a resize by `scale` = (new/old) per axis (x, y)."""
    return (coords + 0.5) * scale - 0.5


class LandmarkDataset(Dataset):
    def __init__(self, records: Sequence[Record], input_size: tuple[int, int]):
        h, w = input_size
        self.records = list(records)
        images, coords, to_orig = [], [], []
        for rec in self.records:
            raw = read_image(rec.image_path)  # (H0, W0) uint8
            h0, w0 = raw.shape
            small = np.asarray(Image.fromarray(raw).resize((w, h), Image.BILINEAR), dtype=np.float32)
            images.append(torch.from_numpy(small)[None] / 255.0)
            down = torch.tensor([w / w0, h / h0], dtype=torch.float64)
            coords.append(resize_coords(torch.from_numpy(rec.landmarks), down).float())
            to_orig.append((1.0 / down).float())
        self.images = (torch.stack(images) - PIXEL_MEAN) / PIXEL_STD  # (N, 1, H, W)
        self.coords = torch.stack(coords)  # (N, K, 2) input pixels
        self.to_orig = torch.stack(to_orig)  # (N, 2) input px -> original px scale per axis
        self.spacing = torch.tensor([r.spacing_mm for r in self.records], dtype=torch.float32)  # (N,)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.images[i], self.coords[i], self.to_orig[i], self.spacing[i]
