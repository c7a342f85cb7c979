"""fit() under torch.distributed (what Ray Train does with several workers), on CPU with gloo."""

import json
import os
import tempfile

import torch.multiprocessing as mp

from trainables import TrialConfig, fit
from trainables.config import apply_overrides


def _worker(rank: int, world: int, init_file: str, cfg_dict: dict, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        reports = []
        fit(
            TrialConfig.from_dict(cfg_dict),
            lambda metrics, checkpoint_dir: reports.append({**metrics, "has_checkpoint": checkpoint_dir is not None}),
        )
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(reports, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_adaloss_sigma_and_only_rank0_checkpoints(tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, {"train.epochs": 4, "target.schedule": "adaloss", "target.adaloss.window": 2})
    TrialConfig.from_dict(cfg)  # valid before spawning
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_worker, args=(2, init_file, cfg, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    sigmas = [[{k: v for k, v in m.items() if k.startswith("target/sigma_")} for m in reports] for reports in ranks]
    # Each rank trains on its own shard, but the per-landmark losses are all-reduced before Adaloss
    # steps, so σ stays identical across ranks, and it has moved by the last epoch (window 2).
    assert sigmas[0] == sigmas[1]
    assert sigmas[0][-1] != sigmas[0][0]
    assert [m["has_checkpoint"] for m in ranks[0]] == [True] * 4
    assert [m["has_checkpoint"] for m in ranks[1]] == [False] * 4
