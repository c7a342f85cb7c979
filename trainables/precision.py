"""Mixed precision (`train.precision`) and NHWC layout (`train.channels_last`) for the training step.

    ctx = autocast(device, "bf16")          # torch.autocast on the device's type, or a no-op for fp32
    scaler = grad_scaler(device, "fp16")    # enabled only for fp16; a disabled scaler is a pass-through
    with ctx:
        heads = model(images)               # convolutions in bf16/fp16
    loss = heads_loss(heads, coords, sigma)  # outside autocast: losses and σ statistics in fp32

fp16 needs a GradScaler (its 5-bit exponent underflows small gradients); bf16 has float32's
exponent range and does not. Both run on CPU too (slowly), which is how the tests check them.
"""

from __future__ import annotations

import contextlib

import torch

# `train.precision` -> autocast dtype; None = plain float32, no autocast.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The autocast context for a forward pass on `device` at `precision` (a no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only; its state belongs in the checkpoint (exact resume)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def device_problem(device: torch.device, precision: str) -> str | None:
    """A precision this device cannot run, as a message naming the field (checked when `fit` knows its device)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return (
            f"train.precision: bf16 needs a GPU with bfloat16 support (Ampere or newer); "
            f"{torch.cuda.get_device_name(device)} has none: use fp16 or fp32"
        )
    return None


def to_layout(x, channels_last: bool):
    """A model or a (B, C, H, W) batch in NHWC memory layout if channels_last, else unchanged."""
    return x.to(memory_format=torch.channels_last) if channels_last else x
