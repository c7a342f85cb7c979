"""The shared trainer runs standalone (no Ray), reports per epoch, and resumes exactly."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from trainables import ConfigError, TrialConfig, fit
from trainables.config import apply_overrides
from trainables.checkpoint import CHECKPOINT_FILE, HISTORY_FILE, PREVIEW_FILE, CheckpointPolicy
from trainables.metrics import reported_metrics


def test_fit_reports_every_epoch_with_a_checkpoint(tiny_config, tmp_path, recorder):
    rec = recorder("kept")
    last = fit(TrialConfig.from_dict(tiny_config), rec)
    assert [m["epoch"] for m in rec.metrics] == [1, 2]
    k = TrialConfig.from_dict(tiny_config).data.num_landmarks
    per_landmark = {f"train/loss_lm_{i}" for i in range(k)} | {f"target/sigma_{i}" for i in range(k)}
    assert set(rec.metrics[0]) == set(reported_metrics()) | per_landmark | {"epoch"}
    assert rec.metrics[0]["target/sigma_3"] == 2.0 and rec.metrics[0]["train/loss_lm_3"] > 0
    assert last == rec.metrics[-1]
    assert all(m["val/mre_mm"] > 0 and 0 <= m["val/sdr_2mm"] <= 100 for m in rec.metrics)
    state = torch.load(rec.checkpoints[-1] / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2 and set(state) >= {"model", "optimizer", "schedule", "rng"}


def test_each_checkpoint_holds_the_arrays_behind_the_trial_pictures(tiny_config, recorder):
    import numpy as np

    cfg = TrialConfig.from_dict(apply_overrides(tiny_config, {"train.epochs": 1, "eval.preview": 3}))
    rec = recorder("kept")
    metrics = fit(cfg, rec)
    p = np.load(rec.checkpoints[-1] / PREVIEW_FILE)
    k, (h, w) = cfg.data.num_landmarks, cfg.data.input_size
    n_val = p["errors"].shape[0]
    assert p["errors"].shape == (n_val, k) and str(p["unit"]) == "mm" and float(p["ced_threshold"]) == 4.0
    # the CED's errors are the ones the epoch's metrics came from
    assert np.nanmean(p["errors"]) == pytest.approx(metrics["val/mre_mm"], rel=1e-5)
    assert p["images"].shape == (3, h, w) and p["images"].dtype == np.uint8 and p["images"].max() > 100
    assert p["gt"].shape == p["pred"].shape == (3, k, 2)
    s = int(p["stride"])
    assert p["heatmaps"].shape == (3, h // s, w // s) and float(p["heatmaps"].max()) == pytest.approx(1.0, abs=1e-3)
    none = recorder("none")
    fit(TrialConfig.from_dict(apply_overrides(tiny_config, {"train.epochs": 1, "eval.preview": 0})), none)
    assert set(np.load(none.checkpoints[-1] / PREVIEW_FILE)) == {"errors", "unit", "ced_threshold", "stride"}


def test_training_lowers_the_loss(tiny_config, tmp_path, recorder):
    cfg = TrialConfig.from_dict(apply_overrides(tiny_config, {"train.epochs": 6}))
    rec = recorder("kept")
    fit(cfg, rec)
    losses = [m["train/loss"] for m in rec.metrics]
    assert losses[-1] < 0.5 * losses[0]


def test_resume_from_a_checkpoint_continues_exactly(tiny_config, tmp_path, recorder):
    # Three epochs straight vs one epoch, then a restart from that epoch's checkpoint: same numbers.
    cfg3 = TrialConfig.from_dict(apply_overrides(tiny_config, {"train.epochs": 3}))
    straight = recorder("a")
    fit(cfg3, straight)
    first = recorder("b")
    fit(TrialConfig.from_dict(apply_overrides(tiny_config, {"train.epochs": 1})), first)
    resumed = recorder("c")
    fit(cfg3, resumed, resume_from=first.checkpoints[-1])
    assert [m["epoch"] for m in resumed.metrics] == [2, 3]
    for a, b in zip(straight.metrics[1:], resumed.metrics):
        for key in ("train/loss", "val/loss", "val/mre_mm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    # Each checkpoint keeps every epoch's metrics so far, across the resume (what a resume replays).
    history = json.loads((resumed.checkpoints[-1] / HISTORY_FILE).read_text())
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert history[0] == first.metrics[0] and history[1:] == resumed.metrics


def test_fit_refuses_a_bad_config_before_training(tiny_config):
    cfg = TrialConfig.from_dict(apply_overrides(tiny_config, {"loss.type": "l7"}))
    with pytest.raises(ConfigError, match=r"loss.type: unknown 'l7'; choose one of \['awing', 'ewc', 'mse'\]"):
        fit(cfg, lambda m, c: pytest.fail("must not report"))


def test_trainables_does_not_import_ray_or_mlflow():
    # Layer rule: only trainables/ray_adapter.py may know about Ray; nothing here knows MLflow.
    code = (
        "import sys, trainables, trainables.trainer, trainables.data, trainables.models;"
        "bad = [m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# --- distillation, σ schedules and losses through fit() -----------------------------------------

TIMING = {"cost/latency_ms", "cost/epoch_s"}  # wall-clock figures, different on every run


def _untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def test_simple_baseline_with_distillation_trains_and_resumes(tiny_config, tmp_path, r18_file, recorder):
    cfg = TrialConfig.from_dict(
        apply_overrides(
            tiny_config,
            {
                "model.name": "simple_baseline",
                "model.backbone": "resnet18",
                "model.weights": str(r18_file),
                "model.width": 0.03125,
                "data.input_size": [64, 64],
                "distill.type": "both",
            },
        )
    )
    straight = recorder("a")
    fit(cfg, straight)
    assert [m["epoch"] for m in straight.metrics] == [1, 2]
    k = cfg.data.num_landmarks
    per_landmark = {f"train/loss_lm_{i}" for i in range(k)} | {f"target/sigma_{i}" for i in range(k)}
    assert set(straight.metrics[0]) == set(reported_metrics()) | per_landmark | {"epoch", "train/loss_distill"}
    for m in straight.metrics:
        assert 0 < m["train/loss_distill"] < math.inf and math.isfinite(m["train/loss"])
    # The teacher is the initial (pretrained) backbone, not the checkpoint's student: resuming
    # after epoch 1 gives the same epoch 2, L_D included.
    resumed = recorder("b")
    fit(cfg, resumed, resume_from=straight.checkpoints[0])
    assert _untimed(resumed.metrics) == _untimed(straight.metrics[1:])


def test_adaloss_schedule_reports_sigma_and_resumes_exactly(tiny_config, tmp_path, recorder):
    cfg = TrialConfig.from_dict(
        apply_overrides(tiny_config, {"target.schedule": "adaloss", "target.adaloss.window": 2, "train.epochs": 4})
    )
    k = cfg.data.num_landmarks
    straight = recorder("a")
    fit(cfg, straight)
    assert [m["epoch"] for m in straight.metrics] == [1, 2, 3, 4]
    sigma = [[m[f"target/sigma_{i}"] for i in range(k)] for m in straight.metrics]
    # σ_0 = min(32, 24) / 4 = 6 (sigma0 = 0). With w = 2 there is no update until w + 1 = 3
    # losses exist, so epochs 1–3 train with σ_0 and epoch 4 with eq 5 applied once.
    assert sigma[0] == sigma[1] == sigma[2] == [6.0] * k
    # Epoch 4, by hand from the reported per-landmark losses L1, L2, L3 (ρ = 0.9, min σ 1):
    # V_{t−1} = var(L1, L2) = ((L1 − L2)/2)², V_t = ((L2 − L3)/2)², Δ = ρ·(1 − V_{t−1}/V_t),
    # and Δ > 0 (growth) only when that landmark's loss rose (L3 > L2).
    for i in range(k):
        l1, l2, l3 = (m[f"train/loss_lm_{i}"] for m in straight.metrics[:3])
        delta = 0.9 * (1 - ((l1 - l2) / 2) ** 2 / ((l2 - l3) / 2) ** 2)
        if delta > 0 and not l3 > l2:
            delta = 0.0
        assert sigma[3][i] == pytest.approx(max(6.0 + delta, 1.0), rel=1e-5, abs=1e-5), i
    assert sigma[3] != [6.0] * k  # the schedule did act: the resume check below is not vacuous
    # From the epoch-2 checkpoint (σ and the two-epoch loss history): epochs 3–4 exactly as straight.
    resumed = recorder("b")
    fit(cfg, resumed, resume_from=straight.checkpoints[1])
    assert [m["epoch"] for m in resumed.metrics] == [3, 4]
    assert _untimed(resumed.metrics) == _untimed(straight.metrics[2:])


@pytest.mark.parametrize("loss_type", ["ewc", "awing"])
def test_ewc_and_awing_losses_train(tiny_config, tmp_path, loss_type, recorder):
    cfg = TrialConfig.from_dict(apply_overrides(tiny_config, {"loss.type": loss_type}))
    rec = recorder("kept")
    fit(cfg, rec)
    assert [m["epoch"] for m in rec.metrics] == [1, 2]
    for m in rec.metrics:
        assert all(math.isfinite(m[key]) and m[key] > 0 for key in ("train/loss", "val/loss", "val/mre_mm"))


# --- which epochs checkpoint --------------------------------------------------------------------


def test_checkpoint_policy_by_hand():
    # The default cadence keeps a trial to at most 30 periodic checkpoints: ceil(epochs / 30).
    assert CheckpointPolicy(0, 300).every == 10 and CheckpointPolicy(0, 31).every == 2
    assert CheckpointPolicy(0, 4).every == 1 and CheckpointPolicy(7, 300).every == 7
    # every 3, 7 epochs, val/sdr_2mm to maximise: 50, 40, 45, 60, 60 (a tie), NaN, 10.
    p = CheckpointPolicy(3, 7, "val/sdr_2mm", "max")
    values = [50.0, 40.0, 45.0, 60.0, 60.0, math.nan, 10.0]
    due = [e for e, v in enumerate(values, 1) if p.due(e, {"val/sdr_2mm": v})]
    # 1 improves on nothing, 3 and 6 are periodic, 4 improves (60 > 50), 5 only ties, 7 is the last.
    assert due == [1, 3, 4, 6, 7] and p.best == 60.0
    resumed = CheckpointPolicy(3, 7, "val/sdr_2mm", "max")
    resumed.load_state_dict(p.state_dict())
    assert resumed.best == 60.0 and not resumed.improves({"val/sdr_2mm": 59.0})
    other = CheckpointPolicy(3, 7, "val/mre_mm", "min")
    other.load_state_dict(p.state_dict())  # saved for another metric: no best yet
    assert other.best is None
    # No metric: the cadence and the last epoch only.
    p = CheckpointPolicy(2, 5)
    assert [e for e in range(1, 6) if p.due(e, {"val/mre_mm": 1.0 / e})] == [2, 4, 5]


def _epochs(checkpoints) -> list[int]:
    return [int(c.name.removeprefix("epoch")) for c in checkpoints]  # the Recorder names copies epoch<N>


def test_fit_checkpoints_the_cadence_each_improvement_and_the_last_and_resumes_exactly(tiny_config, recorder):
    cfg = TrialConfig.from_dict(
        apply_overrides(
            tiny_config, {"train.epochs": 5, "train.checkpoint_every": 2, "train.checkpoint_metric": "val/mre_mm"}
        )
    )
    straight = recorder("a")
    fit(cfg, straight)
    best, improving = math.inf, set()
    for m in straight.metrics:  # the epochs whose val/mre_mm beat every earlier one
        if m["val/mre_mm"] < best:
            best, improving = m["val/mre_mm"], improving | {m["epoch"]}
    assert 1 in improving
    assert _epochs(straight.checkpoints) == sorted({2, 4, 5} | improving)
    for ckpt in straight.checkpoints:
        # Each checkpoint is complete: when written it is the newest, which is what a resume starts from.
        state = torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)
        assert set(state) >= {"model", "optimizer", "schedule", "rng", "epoch", "checkpoint"}
        seen = [m["val/mre_mm"] for m in straight.metrics[: state["epoch"]]]
        assert state["checkpoint"] == {"metric": "val/mre_mm", "best": pytest.approx(min(seen))}
    # From epoch 2's checkpoint: the same epochs 3–5, the same checkpoints (the best so far came along).
    resumed = recorder("b")
    fit(cfg, resumed, resume_from=straight.checkpoints[_epochs(straight.checkpoints).index(2)])
    assert _untimed(resumed.metrics) == _untimed(straight.metrics[2:])
    assert _epochs(resumed.checkpoints) == [e for e in _epochs(straight.checkpoints) if e > 2]


def test_train_threads_hold_during_fit_and_are_restored(tiny_config):
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    seen = []
    for threads in (want, 0):
        cfg = TrialConfig.from_dict(apply_overrides(tiny_config, {"train.epochs": 1, "train.threads": threads}))
        fit(cfg, lambda m, c: seen.append(torch.get_num_threads()))
        assert torch.get_num_threads() == before
    assert seen == [want, before]  # 0 leaves torch's setting alone


def test_a_ray_worker_gets_its_whole_cpus_as_threads():
    from trainables.ray_adapter import cpu_threads

    assert cpu_threads({"CPU": 4.0, "GPU": 1.0}) == 4
    assert cpu_threads({"CPU": 2.5}) == 2
    assert cpu_threads({"CPU": 0.5}) == 1  # a fraction still runs on one thread
    assert cpu_threads({"GPU": 0.5}) is None  # no CPU asked for: torch's setting stays


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_follows_its_drivers_process_by_pid_and_start_time():
    # What driver_alive checks on the driver's node: a SIGKILLed driver is a zombie until its parent
    # reaps it, then gone; a reused pid has another start time.
    from trainables.procs import process_start
    from trainables.ray_adapter import _process_runs

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = process_start(child.pid, zombie_alive=False)
    assert started.isdigit() and _process_runs(child.pid, started)
    assert not _process_runs(child.pid, str(int(started) + 1))  # the same pid, a later process
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped: a zombie
    assert process_start(child.pid, zombie_alive=False) is None and not _process_runs(child.pid, started)
    assert process_start(child.pid) == started  # for the study's lock a zombie's pid is still taken
    child.wait()
    assert process_start(child.pid) is None and not _process_runs(child.pid, started)
    assert _process_runs(0, None)  # nothing to follow (another node or PID namespace): alive


# --- precision and layout -----------------------------------------------------------------------


def test_bf16_phantom_fit_stays_close_to_fp32(tiny_config, recorder):
    # bf16 keeps 8 bits of mantissa in the convolutions; losses and σ statistics stay fp32.
    # Tolerances, from 2 epochs of this config: train/loss within 1 % (measured ≤ 0.06 %),
    # val/loss within 2 % (≤ 0.2 %), and val/mre_mm within one heatmap pixel in x and y:
    # the 96×80 phantom at 0.1 mm/px is seen at 32×24, so a pixel is 0.3 mm × 0.333 mm and
    # moving every landmark's argmax by one pixel each way moves the MRE by at most 0.45 mm.
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = recorder(precision)
        fit(TrialConfig.from_dict(apply_overrides(tiny_config, {"train.precision": precision})), runs[precision])
    for a, b in zip(runs["fp32"].metrics, runs["bf16"].metrics):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=0.01)
        assert b["val/loss"] == pytest.approx(a["val/loss"], rel=0.02)
        assert abs(b["val/mre_mm"] - a["val/mre_mm"]) <= math.hypot(0.3, 80 / 24 * 0.1)
        assert all(b[f"target/sigma_{k}"] == 2.0 for k in range(19))
    assert runs["bf16"].metrics[-1]["train/loss"] < runs["bf16"].metrics[0]["train/loss"]  # it learns


def test_channels_last_changes_the_layout_not_the_numbers(tiny_config, recorder):
    runs = {}
    for channels_last in (False, True):
        runs[channels_last] = recorder(str(channels_last))
        fit(
            TrialConfig.from_dict(apply_overrides(tiny_config, {"train.channels_last": channels_last})),
            runs[channels_last],
        )
    for a, b in zip(runs[False].metrics, runs[True].metrics):
        for key in ("train/loss", "val/loss", "val/mre_mm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key


def test_fp16_keeps_its_loss_scale_in_the_checkpoint_and_resumes_exactly(tiny_config, recorder):
    cfg = TrialConfig.from_dict(apply_overrides(tiny_config, {"train.precision": "fp16"}))
    straight = recorder("a")
    fit(cfg, straight)
    state = torch.load(straight.checkpoints[0] / CHECKPOINT_FILE, weights_only=True)
    assert state["scaler"]["scale"] > 0  # GradScaler's state: the scale and its growth tracker
    resumed = recorder("b")
    fit(cfg, resumed, resume_from=straight.checkpoints[0])
    assert _untimed(resumed.metrics) == _untimed(straight.metrics[1:])


def test_compiled_fit_matches_eager_and_checkpoints_the_plain_module(tiny_config, recorder, monkeypatch):
    # torch.compile fuses kernels but computes the same steps: within float reassociation of eager.
    # Inductor's C++ code generation takes minutes on 2 cores; aot_eager traces the same graphs
    # (dynamo + AOT autograd) without it. The GPU benchmark runs the real backend.
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compile_(model, backend="aot_eager"))
    runs = {}
    for compiled in (False, True):
        runs[compiled] = recorder(f"compile{compiled}")
        fit(
            TrialConfig.from_dict(apply_overrides(tiny_config, {"train.compile": compiled, "train.epochs": 1})),
            runs[compiled],
        )
    a, b = runs[False].metrics[0], runs[True].metrics[0]
    for key in ("train/loss", "val/loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-3), key
    state = torch.load(runs[True].checkpoints[0] / CHECKPOINT_FILE, weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in state["model"])  # loads into an eager model
