"""Shared fixtures: tiny phantom configs that keep the trainer fast on one CPU core."""

from __future__ import annotations

import pytest

TINY_PHANTOM = {"num_train": 8, "num_test1": 4, "num_test2": 4, "image_size": [96, 80], "seed": 3}


@pytest.fixture(scope="session")
def tiny_phantom() -> dict:
    """data.phantom settings for a 16-image phantom of 96×80 pixels."""
    return dict(TINY_PHANTOM)


@pytest.fixture
def tiny_config(tmp_path) -> dict:
    """A trial config (nested dict) that trains in about a second per epoch."""
    return {
        "model": {"name": "unet", "width": 0.125},
        "data": {"dataset": "phantom", "root": str(tmp_path / "phantom"), "input_size": [32, 24],
                 "phantom": dict(TINY_PHANTOM)},
        "target": {"sigma": 2.0},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 4, "seed": 1, "device": "cpu"},
    }
