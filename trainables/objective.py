"""What a trial optimises and how it is scored: the regression loss over heads, and the
evaluation of a split (decode, flip test, errors in mm or NME, the preview arrays for pictures).

    heads_loss = HeadsLoss(LOSSES["ewc"], cfg, strides=(2, 1))
    per_landmark = heads_loss(heads, coords, sigma)       # (K,)
    epoch = EpochLosses(K, device)                        # per-landmark training loss over an epoch
    epoch.add(per_landmark, heads_loss.targeted(coords, sigma))
    metrics, errors = Scorer(cfg, spec, flip_index, device)(model, val_ds, sigma, heads_loss, "val")
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from trainables.config import TrialConfig
from trainables.data.dataset import LandmarkDataset, normalize, to_original
from trainables.heatmaps import DECODERS, TargetRenderer, head_sigma, input_sigma, on_map
from trainables.metrics import NME_AUC_PERCENT, NME_FR_PERCENT, normalized_errors, radial_errors_mm, summarize
from trainables.precision import autocast, to_layout


class HeadsLoss:
    """The regression loss L_R: each head against a target rendered at its own stride, summed over heads.

    heads: [(B, K, H/s, W/s) for s in strides], coords (B, K, 2) (NaN rows = not annotated),
    sigma (K,) in `target.sigma_units` -> (K,) per-landmark loss. With units `input` every head's
    target is σ input pixels wide; with `head` it is σ of that head's pixels, σ·s input pixels
    (farnet §3.4: the coarse MSFA target at stride 2 is twice as wide as the FR target at stride 1).
    Targets are rendered on the heads' device into buffers reused every step (`TargetRenderer`).

    A landmark counts at a head where it is annotated and its target reaches that head's map
    (`heatmaps.on_map`: a face point past the photo's border, or one that augmentation moved off
    the input, has a target that misses it); elsewhere it adds nothing, as MMPose gives a keypoint
    outside the heatmap weight 0. A landmark that counts in no image of the batch has loss 0.
    """

    def __init__(self, loss_fn, cfg: TrialConfig, strides: tuple[int, ...]):
        self.loss_fn, self.loss_cfg, self.strides = loss_fn, cfg.loss, strides
        self.sigma_units = cfg.target.sigma_units
        self.input_size = tuple(cfg.data.input_size)
        self.render = TargetRenderer(normalize=cfg.target.normalize)

    def head_sigma(self, sigma, stride: int):
        """The schedule's σ (K,) -> σ in the pixels of the head at this stride (K,): what its target is rendered with."""
        return head_sigma(sigma, stride, self.sigma_units)

    def __call__(self, heads: list, coords, sigma):
        total = 0
        for slot, (heatmaps, stride) in enumerate(zip(heads, self.strides)):
            sigma_px = input_sigma(sigma, stride, self.sigma_units)  # the renderer works in input pixels
            size = tuple(heatmaps.shape[-2:])
            target = self.render(coords, sigma_px, size, stride, slot)
            valid = on_map(coords, sigma_px, size, stride)  # (B, K): annotated, and the target reaches this map
            total = total + self.loss_fn(heatmaps.float(), target, self.loss_cfg, valid)
        return total

    def targeted(self, coords, sigma):
        """(B, K) bool: the landmarks that count at some head for these coords (B, K, 2) and σ (K,);
        the heads' maps are data.input_size // stride. What `EpochLosses` weighs each batch by."""
        h, w = self.input_size
        hits = [on_map(coords, input_sigma(sigma, s, self.sigma_units), (h // s, w // s), s) for s in self.strides]
        return torch.stack(hits).any(dim=0)


class EpochLosses:
    """The per-landmark training loss of an epoch, what Adaloss's statistics (trainables/schedules.py)
    and `train/loss_lm_<k>` see: each landmark's batch losses averaged over the images in which it
    counted (`HeadsLoss.targeted`), so a batch where it had no target adds nothing; NaN for a
    landmark that had none all epoch (Adaloss then leaves its σ and history as they are).

        epoch = EpochLosses(num_landmarks, device)
        epoch.add(per_landmark, heads_loss.targeted(coords, sigma))  # (K,), (B, K) bool; each step
        epoch.all_reduce()                                           # under DDP: over every rank's images
        per_landmark_loss = epoch.result()                           # (K,) float32 on the CPU
    """

    def __init__(self, num_landmarks: int, device):
        self.sum = torch.zeros(num_landmarks, device=device, dtype=torch.float64)  # Σ loss_k × images counted
        self.images = torch.zeros(num_landmarks, device=device, dtype=torch.float64)

    def add(self, per_landmark, targeted) -> None:
        counted = targeted.sum(dim=0).to(self.images.dtype)  # (K,) images of this batch
        self.sum += per_landmark.detach().to(self.sum.dtype) * counted
        self.images += counted

    def all_reduce(self) -> None:
        dist.all_reduce(self.sum)
        dist.all_reduce(self.images)

    def finite(self) -> bool:
        """False once any landmark's loss was NaN or infinite where it counted: the trial diverged."""
        return bool(torch.isfinite(self.sum).all())

    def result(self):
        seen = self.images > 0
        return torch.where(seen, self.sum / self.images.clamp_min(1), float("nan")).float().cpu()


class Scorer:
    """A split's loss and the field's metrics, from the finest head, in eval mode (BatchNorm uses running stats).

    The forward pass runs at `train.precision` in `train.channels_last` layout, as training does;
    the heatmaps are decoded and the loss computed in float32. Predictions are decoded
    (`eval.decode`; DARK blurs with `eval.dark_blur`, or else the target's σ in the finest head's
    pixels), optionally averaged with the mirrored image's heatmaps (`eval.flip_test`), mapped
    back to the original image's pixels and scored there: radial errors in mm, or NME for faces.
    Returns ({split/metric: value}, per-landmark table as text).
    """

    def __init__(self, cfg: TrialConfig, spec, flip_index: list[int], device):
        self.decode, self.flip_test = DECODERS[cfg.eval.decode], cfg.eval.flip_test
        self.dark_blur = cfg.eval.dark_blur
        self.flip_index, self.unit, self.nme_pair = flip_index, spec.unit, spec.nme_pair
        self.batch_size, self.device = cfg.train.batch_size, torch.device(device)
        self.precision, self.channels_last = cfg.train.precision, cfg.train.channels_last
        default_fr, default_auc = (NME_FR_PERCENT, NME_AUC_PERCENT) if spec.unit == "nme" else (4.0, 4.0)
        self.fr = cfg.eval.fr_threshold or default_fr
        self.auc = cfg.eval.auc_threshold or default_auc

    def _predict(self, model, pixels):
        """(B, 1, H, W) uint8 on the device -> finest heatmaps (B, K, h, w) float32 (flip-averaged if
        eval.flip_test), and the heads (float32)."""
        images = to_layout(normalize(pixels), self.channels_last)
        with autocast(self.device, self.precision):
            heads = model(images)
            mirrored = model(images.flip(-1))[-1] if self.flip_test else None
        heads = [h.float() for h in heads]
        heatmaps = heads[-1]
        if mirrored is not None:
            # Exact for this pixel convention: heatmap column u of the mirror is column W/s - 1 - u here.
            heatmaps = (heatmaps + mirrored.float().flip(-1)[:, self.flip_index]) / 2
        return heatmaps, heads

    def _decode(self, heatmaps, heads_loss: HeadsLoss, sigma):
        """Finest heatmaps (B, K, h, w) -> (B, K, 2) input px, with σ in that head's pixels for DARK."""
        stride = heads_loss.strides[-1]
        blur = self.dark_blur or heads_loss.head_sigma(sigma, stride).to(heatmaps.device)
        return self.decode(heatmaps, stride, blur)

    @torch.no_grad()
    def __call__(
        self, model, ds: LandmarkDataset, sigma, heads_loss: HeadsLoss, split: str
    ) -> tuple[dict, torch.Tensor]:
        """-> ({split/metric: value}, errors (N, K): mm, or NME % for faces; NaN = not annotated)."""
        model.eval()
        errors, loss_sum, n = [], 0.0, 0
        pin = self.device.type == "cuda"  # page-locked batches copy to the GPU without a staging copy
        for images, coords, frames, spacing in DataLoader(ds, batch_size=self.batch_size, pin_memory=pin):
            images, coords = images.to(self.device, non_blocking=pin), coords.to(self.device, non_blocking=pin)
            heatmaps, heads = self._predict(model, images)
            loss_sum += heads_loss(heads, coords, sigma).mean().item() * len(images)
            n += len(images)
            pred = to_original(self._decode(heatmaps, heads_loss, sigma).cpu(), frames)
            gt = to_original(coords.cpu(), frames)
            if self.unit == "nme":
                errors.append(normalized_errors(pred, gt, self.nme_pair))
            else:
                errors.append(radial_errors_mm(pred, gt, spacing))
        errors = torch.cat(errors)
        metrics = {
            f"{split}/loss": loss_sum / n,
            **summarize(errors, split, self.unit, fr_threshold=self.fr, auc_threshold=self.auc),
        }
        return metrics, errors

    @torch.no_grad()
    def preview(
        self, model, ds: LandmarkDataset, errors: torch.Tensor, count: int, heads_loss: HeadsLoss, sigma: torch.Tensor
    ) -> dict:
        """The arrays behind a trial's pictures (dashboards/plots.py), from its first `count` images:
        images (n, H, W) uint8; gt, pred (n, K, 2) input px; heatmaps (n, h, w) float16, each
        landmark's map scaled to [0, 1] and the max taken over landmarks; errors (N, K) of the
        whole split (for the CED); unit, ced_threshold and stride (the finest head's) as 0-d arrays.
        sigma (K,): the schedule's σ this epoch, as for `__call__`."""
        stride = heads_loss.strides[-1]
        out = {
            "errors": errors.float().numpy(),
            "unit": np.array(self.unit),
            "ced_threshold": np.array(self.auc),
            "stride": np.array(stride),
        }
        count = min(count, len(ds))
        if count > 0:
            model.eval()
            images, coords, _, _ = next(iter(DataLoader(ds, batch_size=count)))
            heatmaps, _ = self._predict(model, images.to(self.device))
            pred = self._decode(heatmaps, heads_loss, sigma).cpu()
            peak = heatmaps.flatten(2).amax(-1).clamp(min=1e-12)[..., None, None]
            out |= {
                "images": images[:, 0].numpy(),  # the dataset's uint8 grey levels
                "gt": coords.numpy(),
                "pred": pred.numpy(),
                "heatmaps": (heatmaps.clamp(min=0) / peak).amax(1).cpu().half().numpy(),
            }
        return out
