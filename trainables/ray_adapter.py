"""The one Ray-aware file in trainables/: runs `fit` as a Ray Train worker loop.

`ray.train.report` receives the trainer's per-epoch metrics and checkpoint folder; a restarted
Train run hands its latest checkpoint back to `fit`. A worker whose driver is gone (its process
ended, or its Ray job) stops before writing a checkpoint rather than leave one nobody registers.

Each worker sets torch's intra-op threads to its CPU share (`resources.cpus_per_worker`, whole
CPUs, at least 1) before training: torch would otherwise start one thread per core of the node,
and trials sharing a node would fight over the cores (the target renderer ran 5–8× slower at 2
threads than at 1 on a loaded 2-core machine, benchmarks/README.md). A trial's
`train.threads` > 0 overrides it.

    TorchTrainer(train_loop_per_worker, train_loop_config=trial_config_dict, ...)
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pyarrow.fs
import ray
import ray.train
import ray.util

from trainables.checkpoint import METRICS_FILE, IncompleteCheckpoint, TrainRun, is_complete
from trainables.config import Diverged, TrialConfig
from trainables.procs import UNKNOWN, process_start

DIVERGED = "diverged"  # result key: the Diverged message of a trial whose loss became NaN/inf
RESUMED_FROM = "resumed_from"  # result key: the epoch of the checkpoint these workers started from
# Result key, on the one result that re-reports the checkpoint a run resumed from: that checkpoint's
# folder name, whose history.json the driver reads to deliver epochs the tracking never got.
RESUMED_CHECKPOINT = "resumed_checkpoint"
# train_loop_config key (not a TrialConfig field): a complete checkpoint folder to start from when Train
# hands back none (its record of the run was truncated by a full disk and moved aside: study.faults.integrity).
FALLBACK_CHECKPOINT = "_fallback_checkpoint"


def cpu_threads(assigned: dict[str, float]) -> int | None:
    """Intra-op threads for a worker holding these Ray resources: its whole CPUs, at least 1
    (a 0.5-CPU worker gets 1); None if it holds no CPU (then torch's setting stays)."""
    cpus = assigned.get("CPU", 0.0)
    return max(1, math.floor(cpus)) if cpus > 0 else None


def train_loop_per_worker(config: dict) -> None:
    """Run `fit` as one Train worker. A NaN loss ends the Train run normally with a `diverged`
    result, so that Train does not restart it (restarts are for dead workers and nodes); the Tune
    trial then raises `Diverged` (study.trial)."""
    try:
        _fit_in_worker(config)
    except Diverged as e:  # every rank diverges at the same epoch: the loss is all-reduced first
        ray.train.report({DIVERGED: str(e)})


def _fit_in_worker(config: dict) -> None:
    # Imported here, not at the top: this module is also unpickled by the Tune trial's process and the
    # Train controller (study.trial hands them train_loop_per_worker), which never train; torch and the
    # trainer (models, torchvision) cost seconds per process, on every trial's critical path.
    import torch
    from ray.train.torch import get_device

    from trainables.trainer import fit

    config = dict(config)
    fallback = config.pop(FALLBACK_CHECKPOINT, None)
    cfg = TrialConfig.from_dict(config)
    threads = cpu_threads(ray.get_runtime_context().get_assigned_resources())
    if threads is not None:
        torch.set_num_threads(threads)  # fit's train.threads, if set, wins over this

    driver_alive()  # takes the driver's pid now, while its GCS surely answers (see driver_alive)
    # Where the trial ran, for the MLflow run's tags (not metrics: no "/" in the names).
    node = {"worker_node_id": ray.get_runtime_context().get_node_id(), "worker_node_ip": ray.util.get_node_ip_address()}

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        if checkpoint_dir and not driver_alive():  # no checkpoint for a study nobody drives any more
            print(
                f"the study's driver is gone (Ray job {ray.get_runtime_context().get_job_id()} ended); "
                f"stopping before writing the epoch-{metrics.get('epoch')} checkpoint",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)  # Ray kills this process anyway; this only closes the gap before it does
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report({**metrics, **node}, checkpoint=checkpoint)

    device = get_device()
    checkpoint = _complete_or_older(ray.train.get_checkpoint())
    if checkpoint is None and fallback:  # Train's record of the run was lost (study.trial.fallback_checkpoint)
        checkpoint = ray.train.Checkpoint(fallback)
    if checkpoint is None:
        fit(cfg, report, device=device)
    else:
        with checkpoint.as_directory() as folder:
            # Ctrl-C can land after an epoch's checkpoint was saved but before its metrics reached
            # Tune, and a killed driver's Train run can go on for a moment and save checkpoints whose
            # epochs never reached it: report the checkpoint's epoch again and name the checkpoint, whose
            # history.json the driver replays (the tracking logs each epoch once), then continue.
            saved = Path(folder) / METRICS_FILE
            metrics = json.loads(saved.read_text()) if saved.exists() else {}
            node[RESUMED_FROM] = metrics.get("epoch", 0)  # what a restart's progress line names
            if metrics and ray.train.get_context().get_world_rank() == 0:
                ray.train.report({**metrics, **node, RESUMED_CHECKPOINT: Path(checkpoint.path).name})
            fit(cfg, report, resume_from=Path(folder), device=device)


def driver_alive(timeout_s: float = 2.0) -> bool:
    """False once this worker's Ray job (the study's driver) has ended: its driver process is gone
    (checked on the driver's own node) or the GCS says the job is dead.

    When the driver is SIGKILLed, Ray takes a moment, up to a few seconds, to kill the job's Train
    workers; one that finishes an epoch in that gap would write a checkpoint that no Train run
    registers. Two checks, a few ms per checkpoint:
    - On the driver's node, the driver's pid. The local Ray a driver starts loses its GCS with the
      driver before the job is marked dead, so only this check sees that driver go. The pid and its
      start time are taken at the first call (when the worker starts, while the GCS answers); a pid
      this process cannot see (another PID namespace) turns this check off rather than stop the worker.
    - The GCS's job record, which covers drivers on other nodes of a cluster joined with --address.
    The GCS client is Ray's private API; if it moved, or the GCS does not answer (a restarting GCS
    on a fault-tolerant cluster) or does not know the job, that check says alive: a checkpoint too
    many is removed by the next --resume (study.faults.leftovers), while a healthy worker stopped by
    mistake costs a restart."""
    job = ray.get_runtime_context().get_job_id()
    if job in _driver_process and not _process_runs(*_driver_process[job]):
        return False
    try:
        gcs = ray._private.worker.global_worker.gcs_client
        infos = gcs.get_all_job_info(
            job_or_submission_id=job,
            skip_submission_job_info_field=True,
            skip_is_running_tasks_field=True,
            timeout=timeout_s,
        )
    except Exception:  # noqa: BLE001 (AttributeError/TypeError: Ray's API moved; RpcError, timeout)
        return True
    info = {job_id.hex(): info for job_id, info in infos.items()}.get(job)
    if info is None:
        return True
    if info.is_dead:
        return False
    if job not in _driver_process:
        node = ray.get_runtime_context().get_node_id()
        same_node = info.driver_address.node_id.hex() == node
        started = process_start(info.driver_pid, zombie_alive=False) if same_node and info.driver_pid else None
        started = None if started == UNKNOWN else started  # no /proc: the GCS's record alone decides
        # A driver that is alive by the GCS's record but not visible here runs in another PID namespace.
        _driver_process[job] = (info.driver_pid, started) if started is not None else (0, None)
    return True


# Ray job id -> (the driver's pid, its start time in clock ticks since boot), or (0, None) where the
# driver is on another node or in another PID namespace; filled at a worker's first check.
_driver_process: dict[str, tuple[int, str | None]] = {}


def _process_runs(pid: int, started: str | None) -> bool:
    """Whether the process taken at the first check still runs: True if that check found none to
    follow (pid 0); False once the pid is gone, a zombie, or reused by a later process."""
    return started is None or process_start(pid, zombie_alive=False) == started


def _complete_or_older(checkpoint: ray.train.Checkpoint | None) -> ray.train.Checkpoint | None:
    """The checkpoint Train hands back if it is complete (trainables.checkpoint's manifest), else the
    newest complete one beside it in the same Train run (local or NFS storage), else an error.
    Train registers a checkpoint only after its upload, so this guards against a folder damaged after."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        if is_complete(Path(folder)):
            return checkpoint
    if not isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        raise IncompleteCheckpoint(
            f"{checkpoint.path}: incomplete (no valid manifest.json); delete it to resume from the one before"
        )
    older = TrainRun(Path(checkpoint.path).parent).newest_complete(skip=Path(checkpoint.path).name)
    if older is None:
        raise IncompleteCheckpoint(f"{checkpoint.path}: incomplete, and no complete checkpoint beside it")
    epoch, folder = older
    print(f"warning: {checkpoint.path} is incomplete; resuming from {folder.name} (epoch {epoch})", flush=True)
    return ray.train.Checkpoint(str(folder), filesystem=checkpoint.filesystem)
