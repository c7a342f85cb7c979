"""A study whose storage is an object store (`study.storage: s3://studies/resume`), against a real
S3-compatible server on loopback (moto's, the `s3_store` fixture): the real CLI, a real local Ray,
a real MLflow SQLite store (`--tracking-uri`, since an object store holds no SQLite file). Ray: each
CLI run starts its own local Ray, not the session's shared cluster (conftest.py): its driver is killed.

The endpoint and credentials reach the CLI, and every Ray process it starts, only through the usual
AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), which
pyarrow's S3 filesystem reads; the spec names the bucket and nothing else.

The study (2 trials of 3 epochs, one at a time) is SIGKILLed once the first trial has printed
epoch 2, then `--resume`d: Tune's state, the Train runs' checkpoints, the study snapshot and the
driver lock are all objects in the bucket, nothing is in a local folder, the killed driver's lock
is taken over, the first trial continues from its checkpoint, and MLflow has each epoch once.

Budget: ~2 min on a 2-core machine (3 Train worker-group starts, 2 CLI and Ray start-ups).
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from helpers import (
    EPOCH,
    NAME,
    Runs,
    StudyProcess,
    first_epoch_after_resume,
    histories,
    objects,
    trial_runs,
    write_spec,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 3
PREFIX = "resume"  # study.storage: s3://<bucket>/resume


def kill_after_epoch(spec: Path, cwd: Path, env: dict, runs: Runs, epoch: int, timeout: float = 400) -> dict:
    """Start the study; SIGKILL the driver once its first trial printed `epoch <trial> <epoch>/N`."""
    p = StudyProcess(str(spec), "--tracking-uri", env["uri"], cwd=cwd, env=env["aws"], runs=runs)

    def first_trial_at(line: str) -> bool:
        m = EPOCH.match(line)
        return bool(m and p.starts and m[1] == p.starts[0] and int(m[2]) == epoch)

    p.wait_for(first_trial_at, timeout, f"the first trial's `epoch ... {epoch}/{EPOCHS}` line")
    p.send(signal.SIGKILL)
    rc = p.wait(timeout=60)
    p.kill()  # only the driver died; its Ray processes are still in its session
    (cwd / "killed.log").write_text(p.output)
    return {"rc": rc, "output": p.output, "trial": p.starts[0]}


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_phantom, s3_store):
    tmp = tmp_path_factory.mktemp("s3study")
    storage = f"s3://{s3_store['bucket']}/{PREFIX}"
    spec = write_spec(tmp / "s3.yaml", storage, tiny_phantom, epochs=EPOCHS)
    env = {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "aws": s3_store["env"]}
    runs = Runs()
    t0 = time.monotonic()
    try:
        killed = kill_after_epoch(spec, tmp, env, runs, epoch=2)
        after_kill = objects(s3_store, f"{PREFIX}/{NAME}/")
        # a checkpoint folder that the killed trial's Train run never registered, as a worker outliving its
        # driver writes one (named to sort after every real one, so that it would be taken as the newest)
        orphan = f"train/train_{killed['trial']}/checkpoint_2099-01-01_00-00-00.000000"
        s3_store["client"].put_object(
            Bucket=s3_store["bucket"], Key=f"{PREFIX}/{NAME}/{orphan}/checkpoint.pt", Body=b"x"
        )
        t1 = time.monotonic()
        resumed = runs.run("resume", str(spec), "--resume", "--tracking-uri", env["uri"], cwd=tmp, env=env["aws"])
        t2 = time.monotonic()
        print(f"object-store study: until the kill {t1 - t0:.0f} s, resume {t2 - t1:.0f} s")
        yield {
            "tmp": tmp,
            "uri": env["uri"],
            "killed": killed,
            "after_kill": after_kill,
            "resumed": resumed,
            "after": objects(s3_store, f"{PREFIX}/{NAME}/"),
            "leftovers": runs.leftovers,
            "orphan": orphan,
        }
    finally:
        runs.cleanup()


def test_the_state_is_in_the_bucket_when_the_driver_is_killed(study):
    keys, trial = study["after_kill"], study["killed"]["trial"]
    assert study["killed"]["rc"] == -signal.SIGKILL
    base = f"{PREFIX}/{NAME}"
    assert f"{base}/study.json" in keys and f"{base}/driver.lock" in keys  # the killed driver's lock stays
    assert any(k.startswith(f"{base}/tune/experiment_state-") for k in keys), sorted(keys)
    assert any(k.startswith(f"{base}/train/train_{trial}/checkpoint_") for k in keys), sorted(keys)


def test_resume_from_the_bucket_finishes_the_study_with_each_epoch_once(study):
    resumed, trial = study["resumed"], study["killed"]["trial"]
    out = resumed.stdout
    assert resumed.returncode == 0, out[-3000:] + resumed.stderr[-3000:]
    assert "took over the study's lock" in out and "is not running on this host" in out
    # it continues from its checkpoint (epoch 2 or later, read back from the bucket), not from epoch 1
    assert first_epoch_after_resume(out, trial) >= 2, out[-3000:]
    assert f"epoch  {trial}  {EPOCHS}/{EPOCHS}" in out
    assert "2 trials (0 failed or diverged)" in out

    trials, parents, n = trial_runs(study["uri"])
    assert parents == 1 and n == 2
    assert {t["outcome"] for t in trials.values()} == {"finished"}
    steps = list(range(1, EPOCHS + 1))
    assert histories(study["uri"], trials) == {tid: {"train/loss": steps, "val/mre_mm": steps} for tid in trials}
    assert {label: left for label, left in study["leftovers"].items() if left} == {}


def test_resume_removes_checkpoint_folders_no_train_run_registered_from_the_bucket(study):
    out, orphan = study["resumed"].stdout, study["orphan"]
    assert re.search(r"note: removed \d+ checkpoint folder\(s\) that no Train run registered", out), out[-3000:]
    assert not [k for k in study["after"] if k.startswith(f"{PREFIX}/{NAME}/{orphan}/")]


def test_every_trial_checkpoints_to_the_bucket_and_nothing_to_a_local_folder(study):
    keys, base = study["after"], f"{PREFIX}/{NAME}"
    trials, _, _ = trial_runs(study["uri"])
    for tid in trials:
        assert any(
            k.startswith(f"{base}/train/train_{tid}/checkpoint_") and k.endswith("checkpoint.pt") for k in keys
        ), (tid, sorted(keys))
    assert f"{base}/driver.lock" not in keys  # released at the end
    local = [p for p in Path(study["tmp"]).rglob("*") if p.name.startswith(("checkpoint_", "experiment_state"))]
    assert local == []  # no Tune or Train state beside the spec (MLflow's SQLite file and artefacts only)
