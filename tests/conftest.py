"""Shared fixtures: tiny phantom configs that keep the trainer fast on one CPU core."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Decoded-image caches go to a throwaway folder, not the user's ~/.cache (Ray workers inherit this).
os.environ.setdefault("LANDMARK_STUDY_CACHE", tempfile.mkdtemp(prefix="landmark-study-test-cache-"))

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
        "data": {
            "dataset": "phantom",
            "root": str(tmp_path / "phantom"),
            "input_size": [32, 24],
            "phantom": dict(TINY_PHANTOM),
        },
        "target": {"sigma": 2.0},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 4, "seed": 1, "device": "cpu"},
    }


class Recorder:
    """A `report` callable that keeps the metrics and copies each checkpoint (valid only during the call)."""

    def __init__(self, keep_dir: Path):
        self.metrics, self.checkpoints, self.keep_dir = [], [], keep_dir

    def __call__(self, metrics, checkpoint_dir):
        self.metrics.append(dict(metrics))
        if checkpoint_dir is not None:
            dest = self.keep_dir / f"epoch{metrics['epoch']}"
            shutil.copytree(checkpoint_dir, dest)
            self.checkpoints.append(dest)


@pytest.fixture
def recorder(tmp_path):
    """recorder(name) -> a fresh Recorder keeping its checkpoint copies under tmp_path/name."""
    return lambda name="kept": Recorder(tmp_path / name)


@pytest.fixture(scope="session")
def r18_file(tmp_path_factory):
    """A "pretrained" resnet18 in the real on-disk format (a torchvision state dict), made here: no download."""
    import torch
    import torchvision

    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("weights") / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium (.ci/run installs it); the browser checks skip without it."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no headless browser: apt-get install chromium (Debian) to run the Pareto page tests")
    return exe


@pytest.fixture(scope="session")
def s3_store():
    """A real S3-compatible server (moto's, from the `test` extra) on a free loopback port, with a bucket.

    Yields {"endpoint", "bucket", "env", "client"}: `env` holds the usual AWS variables that a CLI
    subprocess (and the Ray processes it starts) reads the endpoint and credentials from; they are
    never in a spec. `client` is a boto3 S3 client for checking what landed in the bucket.
    """
    moto_server = pytest.importorskip("moto.server", reason="pip install -e '.[test]' brings moto[server]")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "test-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret",
            "AWS_REGION": "us-east-1",
        }
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket="studies")
        yield {"endpoint": env["AWS_ENDPOINT_URL"], "bucket": "studies", "env": env, "client": client}
    finally:
        server.stop()
