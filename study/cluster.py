"""The Ray side of a study before any trial: joining or starting Ray, what the cluster holds,
and the plan (trials at once, trials in all) that follows from the spec's resources.

    session = init_ray(address=None, verbose=False, dashboard=True)   # a local Ray (its session folder), or join --address
    concurrency, configurations = plan(spec)                 # SpecError if no trial can ever be placed
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import optuna
import ray

from study.spec import Resources, Spec, SpecError, StudyError


def resource_problems(res: Resources, nodes: list[dict[str, float]]) -> list[str]:
    """What stops one trial from ever being placed, given each alive node's total resources.

    Every Train worker must fit on one node; the cluster is asked once, before any trial starts.
    """
    need = res.per_worker()
    out = []
    for key, amount in need.items():
        path = {"CPU": "resources.cpus_per_worker", "GPU": "resources.gpus_per_worker"}.get(
            key, f"resources.custom.{key}"
        )
        most = max((n.get(key, 0.0) for n in nodes), default=0.0)
        total = sum(n.get(key, 0.0) for n in nodes)
        if most == 0 and key not in ("CPU", "GPU"):
            have = sorted({k for n in nodes for k in n if not k.startswith(("node:", "accelerator_type"))})
            out.append(f"{path}: no node of the cluster has a {key!r} resource; it has {', '.join(have)}")
        elif amount > most:
            out.append(
                f"{path}: each worker needs {amount:g} {key} but the largest node has {most:g} "
                f"({len(nodes)} node(s), {total:g} {key} in all)"
            )
    if not out:
        fits = workers_that_fit(res, nodes)
        if res.workers > fits:
            out.append(
                f"resources.workers: {res.workers} workers of {_fmt_request(need)} each, but the cluster "
                f"holds only {fits} at once"
            )
    return out


def workers_that_fit(res: Resources, nodes: list[dict[str, float]]) -> int:
    """How many Train workers of this request the nodes hold at once (each on one node)."""
    need = res.per_worker()
    return sum(min(int(n.get(k, 0.0) // a) for k, a in need.items() if a > 0) for n in nodes)


def _fmt_request(need: dict[str, float]) -> str:
    return " + ".join(f"{v:g} {k}" for k, v in need.items())


def init_ray(address: str | None, verbose: bool, dashboard: bool) -> str | None:
    """Join `address` (or RAY_ADDRESS), or start a local Ray; returns the session folder of a Ray
    started here (what study.faults.leftovers records, to clean up after a killed driver), else None."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    # Worker output (Train's per-report lines, placement-group notices) would bury the progress
    # lines; it stays in Ray's session logs, and a failed trial's traceback is in its error.txt.
    kwargs = dict(logging_level="WARNING", log_to_driver=verbose)
    if address:
        _use_the_clusters_token(address)
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise StudyError(f"cannot join the Ray cluster at {address}: {e}") from None
        print(
            f"joined Ray cluster at {address}: {describe_resources(ray.cluster_resources())} "
            f"on {len(alive_nodes())} node(s)",
            flush=True,
        )
        return None
    else:
        # When ASHA stops a trial, Tune kills its driver ungracefully, and Train V2 frees that
        # trial's placement group only through the state API, which the dashboard serves: without
        # it each stopped trial keeps its CPUs and the study stalls. The dashboard costs ~10 s to
        # start, so it runs only when trials can be stopped. Clusters started by `ray start` have it.
        # address="local": a new Ray of our own, even when a `ray start` cluster runs on this machine
        # (ray.init() would silently join it); joining one is what --address auto is for.
        if dashboard:
            # Ray's state API, run inside workers, finds the dashboard through the machine's most
            # recently started Ray (/tmp/ray/ray_current_cluster), which need not be this one: name
            # ours to every worker explicitly.
            port = _free_port()
            kwargs.update(
                dashboard_port=port, runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}
            )
        # One node that no autoscaler drains: Train's preemption watcher (one more actor process per
        # trial, started beside the worker and polling the node's drain state) has nothing to watch, and
        # its start competes with the worker's for the CPUs. Joined clusters keep it.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        context = _start_local_ray(include_dashboard=dashboard, dashboard_host="127.0.0.1", **kwargs)
        print(f"started a local Ray: {describe_resources(ray.cluster_resources())}", flush=True)
        return context.address_info.get("session_dir")


def _use_the_clusters_token(address: str) -> None:
    """A cluster with Ray's token authentication (`ray start --head` turns it on): send the token this
    machine has (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) although RAY_AUTH_MODE is
    unset; study.preflight has already said so in one line if there is none."""
    from study.preflight import cluster_wants_token, ray_token

    hostport = address.split("://", 1)[-1].rstrip("/")
    if os.environ.get("RAY_AUTH_MODE") or address.startswith(("ray://", "auto")) or ray_token()[0] is None:
        return
    try:
        wanted = cluster_wants_token(hostport)
    except Exception:  # noqa: BLE001 - not a plain GCS address: ray.init says what is wrong
        return
    if wanted:  # RAY_AUTH_MODE=token, for this process and its children, as Ray itself turns it on
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()


# On a loaded machine Ray's own start can fail: its raylet gives up waiting for the dashboard agent's
# port file and exits, and ray.init then waits 30 s for a node that never registers ("The current node
# timed out during startup"). A second start, once the first one's processes are gone, is what helps.
def _start_local_ray(**kwargs):
    """ray.init of a new local Ray; on a failed start, stop what it left and try once more.

    Ray's processes start with SIGHUP ignored (nohup's rule, inherited across exec): a closed terminal
    hangs up its whole process group, and the driver's graceful stop (study.stop) needs its Ray alive."""
    if threading.current_thread() is not threading.main_thread():
        return _init_with_one_retry(**kwargs)
    hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return _init_with_one_retry(**kwargs)
    finally:
        signal.signal(signal.SIGHUP, hangup)


def _init_with_one_retry(**kwargs):
    began = time.time()
    try:
        return ray.init(address="local", **kwargs)
    except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for a node that never came up
        if not _failed_start(e):
            raise
        why = str(e).strip().splitlines()[0].split(". ")[0]
    left = stop_failed_start(began)
    print(
        f"note: Ray's local start failed ({why}); stopped the {len(left)} process(es) it left and trying once more",
        flush=True,
    )
    return ray.init(address="local", **kwargs)


def _failed_start(e: BaseException) -> bool:
    text = str(e)
    return "timed out during startup" in text or "raylet" in text.lower()


def stop_failed_start(since: float) -> list[str]:
    """Kill the processes of this process's Ray sessions created since `since` (a failed ray.init):
    their session folder is <Ray's temp folder>/session_<time>_<our pid>. -> 'pid name' of each."""
    from ray._common.utils import get_default_ray_temp_dir

    from study.faults.leftovers import kill_processes, session_processes

    ray.shutdown()  # whatever of the failed start this process still holds
    killed = []
    for folder in Path(get_default_ray_temp_dir()).glob(f"session_*_{os.getpid()}"):
        if folder.is_dir() and not folder.is_symlink() and folder.stat().st_mtime >= since - 1:
            killed += kill_processes(session_processes(str(folder)))
    return killed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive_nodes() -> list[dict[str, float]]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def plan(spec: Spec) -> tuple[int, int]:
    """(trials at once, configurations in all; each runs study.repeats trials). Fails, naming the
    resources: key, if no trial can be placed."""
    nodes = alive_nodes()
    problems = resource_problems(spec.resources, nodes)
    if problems:
        raise SpecError(
            spec.source,
            problems + [f"(the cluster: {describe_resources(ray.cluster_resources())} on {len(nodes)} node(s))"],
        )
    trials = spec.study.trials
    if spec.study.sampler == "grid":
        points = len(spec.grid())
        if trials != points:
            print(
                f"note: the grid has {points} points; running {min(trials, points)} of them"
                + (" (in a seeded random order)" if trials < points else f", not study.trials {trials}"),
                flush=True,
            )
        trials = min(trials, points)
    need = spec.resources.per_worker()
    fits = max(1, workers_that_fit(spec.resources, nodes) // spec.resources.workers)
    if spec.study.concurrency > fits:
        print(
            f"warning: study.concurrency {spec.study.concurrency} is more than the cluster holds ({fits} trials "
            f"of {spec.resources.workers} × {describe_resources(need)}); the extra trials will wait",
            flush=True,
        )
    return max(1, min(spec.study.concurrency or fits, trials * spec.study.repeats)), trials


def describe_resources(resources: dict) -> str:
    """'2 CPU, 1 GPU, 1 worker_node': CPU and GPU first, then custom resources by name (Ray's order varies)."""
    shown = [
        k
        for k in resources
        if k in ("CPU", "GPU") or not k.startswith(("node:", "memory", "object_store_memory", "accelerator_type"))
    ]
    shown.sort(key=lambda k: (k not in ("CPU", "GPU"), k))
    return ", ".join(f"{resources[k]:g} {k}" for k in shown) or "no resources"
