"""deploy/: each file checked as far as can be done without Docker, a Kubernetes cluster, a cloud
account or SLURM.

- Dockerfile: CUDA base, pip install of the project, a non-root USER, tini as PID 1, CMD = the study
  command docs/cluster.md shows.
- rayjob.yaml: KubeRay RayJob ray.io/v1 with the keys its CRD requires (ray-operator/config/crd/
  bases/ray.io_rayjobs.yaml: rayClusterSpec needs headGroupSpec; a group needs template and a pod
  spec with named containers; a worker group also groupName, minReplicas, maxReplicas), S3 storage,
  an http tracking server, credentials only from a Secret.
- ray-cluster.yaml: what `ray up` does before it calls the cloud: fill in the provider's defaults
  and validate against Ray's own schema (ray/autoscaler/ray-schema.json).
- slurm.sbatch: `bash -n`, a head on the first node and workers on the others through srun; and run
  for real with stand-ins for srun, scontrol, ray and the driver: a TERM (HUP) to the batch script
  reaches the driver, and the script exits with the driver's 143 (129).
Every study command is parsed by study.run's own parser and its spec loaded with its --set
overrides; every repository path a file names must exist.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from study.run import parse_args
from study.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE_ROOT = "/app"  # the Dockerfile's WORKDIR: the repository's root inside the image
STUDY_COMMAND = "python -m study.run search_spaces/farnet.yaml"  # the study command of deploy/ and docs/cluster.md
SECRETISH = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)


def _cluster_page() -> str:
    """docs/cluster.md, "Studies on a cluster", which says how to use each deploy file."""
    return (REPO / "docs" / "cluster.md").read_text()


def _check_study_command(argv: list[str]) -> None:
    """python -m study.run <farnet.yaml> [options]: the documented command, options its parser takes,
    --set overrides the spec accepts."""
    assert argv[:3] == ["python", "-m", "study.run"], argv
    spec = argv[3].removeprefix(IMAGE_ROOT + "/")
    assert spec == "search_spaces/farnet.yaml" and (REPO / spec).is_file()
    args = parse_args(argv[3:])
    load_spec(REPO / spec, args.overrides, check_data=False)
    assert STUDY_COMMAND in _cluster_page()


def _repo_paths(text: str) -> set[str]:
    """Paths into the repository a text names: relative ones, or under the image's /app."""
    return {
        m.group(1)
        for m in re.finditer(
            rf"(?:{IMAGE_ROOT}/|(?<![\w./-]))((?:search_spaces|deploy|study|trainables|dashboards)/[\w./-]*\w)", text
        )
    }


@pytest.mark.parametrize("name", ["Dockerfile", "rayjob.yaml", "ray-cluster.yaml", "slurm.sbatch"])
def test_every_repository_path_a_deploy_file_names_exists(name):
    paths = _repo_paths((DEPLOY / name).read_text())
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"deploy/{name} names {missing}"


def test_the_docs_say_which_deploy_file_is_for_what():
    section = _cluster_page()
    for name in ["Dockerfile", "rayjob.yaml", "ray-cluster.yaml", "slurm.sbatch"]:
        assert f"deploy/{name}" in section
        assert (DEPLOY / name).is_file()


# --- Dockerfile -------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def test_dockerfile():
    steps = _instructions(DEPLOY / "Dockerfile")
    kinds = [k for k, _ in steps]
    assert steps[0][0] == "FROM" and steps[0][1].startswith("nvidia/cuda:") and "ubuntu" in steps[0][1]
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert "python3.11 -m venv" in runs and "pip install ." in runs and "pip install --no-deps ." in runs
    for kind, arg in steps:
        if kind == "COPY":
            *sources, _ = shlex.split(arg)
            assert all((REPO / s).exists() for s in sources if not s.startswith("--")), arg
    # the project and the shipped specs are in the image, under the WORKDIR the documented paths are relative to
    copied = {shlex.split(a)[0] for k, a in steps if k == "COPY"}
    assert {"pyproject.toml", "study", "trainables", "dashboards", "search_spaces"} <= copied
    assert ("WORKDIR", IMAGE_ROOT) in steps
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0") and kinds.index("USER") < kinds.index("CMD")
    assert f"useradd --create-home --uid 1000 --shell /bin/bash {users[-1]}" in runs
    # tini as PID 1 passes docker stop's SIGTERM on to the driver (which stops the study gracefully)
    assert json.loads(next(a for k, a in steps if k == "ENTRYPOINT")) == ["/usr/bin/tini", "--"]
    assert re.search(r"apt-get install [^&]*\btini\b", runs)
    cmd = json.loads(next(a for k, a in steps if k == "CMD"))  # exec form
    assert " ".join(cmd) == STUDY_COMMAND
    _check_study_command(cmd)


# --- KubeRay RayJob ---------------------------------------------------------------------------------


def _containers(group: dict) -> list[dict]:
    spec = group["template"]["spec"]
    assert spec["containers"] and all(c.get("name") for c in spec["containers"])
    return spec["containers"]


def test_rayjob_manifest():
    docs = list(yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()))
    assert len(docs) == 1
    job = docs[0]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    import ray

    assert cluster["rayVersion"] == ray.__version__  # the Ray the project pins
    head = cluster["headGroupSpec"]
    workers = cluster["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    containers = _containers(head) + [c for g in workers for c in _containers(g)]
    assert all(isinstance(v, str) for v in head.get("rayStartParams", {}).values())  # the CRD: map of strings
    # one image, ours, on every Ray node
    assert {c["image"] for c in containers} == {containers[0]["image"]}
    assert re.search(r"/landmark-study:[\w.]+$", containers[0]["image"])
    assert all(c["resources"]["limits"].get("nvidia.com/gpu") for g in workers for c in _containers(g))

    # a stop (the RayJob deleted, a drain) is SIGTERM to the driver: Ray's job supervisor, the head pod and
    # the submitter give it the time its graceful stop takes (about 20 s) before SIGKILL
    head_env = {e["name"]: e.get("value") for c in _containers(head) for e in c.get("env", [])}
    assert int(head_env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30
    assert head["template"]["spec"]["terminationGracePeriodSeconds"] > int(head_env["RAY_JOB_STOP_WAIT_TIME_S"])
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["terminationGracePeriodSeconds"] >= head["template"]["spec"]["terminationGracePeriodSeconds"]
    assert submitter["containers"][0]["image"] == containers[0]["image"] and "command" not in submitter["containers"][0]

    # the study: S3 storage, a tracking server, and the spec's data path overridden
    argv = shlex.split(spec["entrypoint"])
    _check_study_command(argv)
    args = parse_args(argv[3:])
    assert args.storage.startswith("s3://") and args.tracking_uri.startswith("http://")
    assert "--address" not in argv  # a Ray job's driver gets RAY_ADDRESS from Ray

    # credentials reach every Ray container only through a Secret, never as a literal
    secrets = set()
    for c in containers:
        refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
        assert refs, f"container {c['name']}: no envFrom secretRef"
        secrets.update(refs)
        for e in c.get("env", []):
            if SECRETISH.search(e["name"]):
                assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), e
    assert len(secrets) == 1
    assert not re.search(r"://[^/\s]*@|AWS_|PASSWORD", spec["entrypoint"])
    assert not SECRETISH.search(json.dumps({k: v for k, v in spec.items() if k != "rayClusterSpec"}))


# --- Ray cluster launcher ---------------------------------------------------------------------------


def test_ray_cluster_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(config)
    full = prepare_config(copy.deepcopy(config))  # the provider's defaults filled in, as `ray up` does
    validate_config(full)  # jsonschema against ray-schema.json, and the node-type checks
    assert full["head_node_type"] in full["available_node_types"]
    assert full["head_setup_commands"] == []  # nothing to pip-install into the image's venv
    assert re.search(r"/landmark-study:[\w.]+$", config["docker"]["image"])
    gpu = [t for t in config["available_node_types"].values() if t.get("resources", {}).get("GPU")]
    assert gpu and config["available_node_types"][config["head_node_type"]]["resources"].get("CPU") == 0
    assert not SECRETISH.search(json.dumps(config["provider"]) + json.dumps(config["auth"]))
    # the study runs with `ray exec` as docs/cluster.md shows
    line = next(line for line in _cluster_page().splitlines() if line.startswith("ray exec deploy/ray-cluster.yaml"))
    argv = shlex.split(line)
    _check_study_command(shlex.split(argv[-1]))


# --- SLURM ------------------------------------------------------------------------------------------


def test_slurm_script():
    path = DEPLOY / "slurm.sbatch"
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert text.startswith("#!/bin/bash\n")
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.MULTILINE))
    assert int(sbatch["nodes"]) >= 2 and sbatch["ntasks-per-node"] == "1"
    joined = text.replace("\\\n", " ")
    # the head on the first node, a worker on each other node, each in an srun step
    assert re.search(r"head_node=\$\{nodes\[0\]\}", text)
    assert re.search(r'srun [^\n]*-w "\$head_node"\s+"\$RAY" start --head --block', joined)
    assert re.search(
        r'for node in "\$\{nodes\[@\]:1\}"; do\s+srun [^\n]*-w "\$node"\s+"\$RAY" start --block '
        r'--address="\$address"',
        joined,
    )
    # then the study, against that cluster
    line = next(line for line in joined.splitlines() if "-m study.run" in line)
    values = {
        "$PY": "python",
        "$address": "10.0.0.1:6379",
        "$STUDY_STORAGE": "/shared/studies",
        "$DATA_ROOT": "/shared/ISBI2015",
    }
    argv = [
        re.sub(r"\$\w+", lambda m: values[m.group(0)], a)
        for a in shlex.split(line.split("||")[0])
        if a not in ("${STUDY_ARGS:-}", "&")
    ]
    _check_study_command(argv)
    args = parse_args(argv[3:])
    assert args.address == "10.0.0.1:6379" and args.storage == "/shared/studies"


# Stand-ins for what a SLURM node has: srun runs its command here, scontrol names one node, ray keeps
# a "node" running until it is killed, and the driver records the signal it gets and exits as
# study.run does (128 + the signal). Everything else the script runs is the real thing (bash, kill).
STAND_INS = {
    "srun": """#!/bin/bash
        while [[ $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done
        exec "$@"
        """,
    "scontrol": """#!/bin/bash
        echo node1
        """,
    "ray": """#!/bin/bash
        [[ $1 == start ]] && exec sleep 600
        exit 0
        """,
    "python": f"""#!/bin/bash
        if [[ $1 == -m && $2 == study.run ]]; then exec {sys.executable} "$(dirname "$0")/driver.py" "$@"; fi
        if [[ $2 == *ray.init* ]]; then echo 1; exit 0; fi  # wait_for_nodes: every node has joined
        exec {sys.executable} "$@"
        """,
    "driver.py": """
        import os, signal, sys, time
        def stop(signum, frame):
            with open("driver.got", "w") as f:
                f.write(signal.Signals(signum).name)
            sys.exit(128 + signum)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, stop)
        open("driver.started", "w").write(" ".join(sys.argv[1:]))
        time.sleep(600)
        sys.exit(0)
        """,
}


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_the_slurm_script_passes_a_stop_signal_to_the_driver(tmp_path, sig, status):
    text = (DEPLOY / "slurm.sbatch").read_text()
    assert re.search(r"^#SBATCH --signal=B:TERM@\d+$", text, re.MULTILINE)  # TERM to the batch shell before the limit
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text(textwrap.dedent(body).lstrip())
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PY": str(bin_dir / "python"),
        "DATA_ROOT": str(tmp_path),
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_CPUS_PER_TASK": "2",
        "STUDY_STORAGE": str(tmp_path / "studies"),
        "NODE_WAIT_S": "30",
    }
    batch = subprocess.Popen(
        ["bash", str(DEPLOY / "slurm.sbatch")],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "driver.started").exists():
            assert batch.poll() is None, batch.communicate()[0]
            assert time.monotonic() < deadline, "the driver did not start"
            time.sleep(0.05)
        assert "search_spaces/farnet.yaml --address" in (tmp_path / "driver.started").read_text()
        batch.send_signal(sig)  # what sbatch --signal=B:TERM does: the batch shell only
        out, _ = batch.communicate(timeout=60)
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
    assert (tmp_path / "driver.got").read_text() == sig.name, out
    assert batch.returncode == status, out
