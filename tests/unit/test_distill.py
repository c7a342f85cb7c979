"""Cross-task distillation (cross-task paper §2.3, eqs 2–4): the two losses by hand, the frozen
teacher, the config checks, and `distill.type none` / λ = 0 as plain fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch

from trainables import TrialConfig, fit
from trainables.config import DistillConfig, LossConfig, ModelConfig, apply_overrides
from trainables.distill import Distiller, cd_loss, distill_problems, distill_term, ed_loss
from trainables.losses import LOSSES
from trainables.models.simple_baseline import SimpleBaseline
from trainables.checkpoint import CHECKPOINT_FILE

WIDTH = 0.03125  # SimpleBaseline decoder: max(8, round(256·width)) = 8 channels
SMALLEST = ["resnet18", "vgg16", "densenet121"]  # the smallest BACKBONES of each family


def _student(backbone: str = "resnet18", weights: str = "none", k: int = 2) -> SimpleBaseline:
    torch.manual_seed(0)
    return SimpleBaseline(k, backbone=backbone, width=WIDTH, weights=weights)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- eq 3: L_CD ---------------------------------------------------------------------------------


def test_cd_loss_matches_eq3_by_hand():
    # μ = 2, 3 classes, 2 samples.
    # Sample 1: s = (0, 0, 0)      -> softmax(s/2) = (1/3, 1/3, 1/3)
    #           t = (2 ln 2, 0, 0) -> t/2 = (ln 2, 0, 0), exp = (2, 1, 1) -> (1/2, 1/4, 1/4)
    #           diff = (-1/6, 1/12, 1/12), ‖diff‖² = 1/36 + 2/144 = 6/144 = 1/24
    # Sample 2: s = (2 ln 3, 0, 0) -> exp(s/2) = (3, 1, 1) -> (3/5, 1/5, 1/5)
    #           t = (0, 0, 2 ln 2) -> exp(t/2) = (1, 1, 2) -> (1/4, 1/4, 1/2)
    #           diff = (7/20, -1/20, -6/20), ‖diff‖² = (49 + 1 + 36)/400 = 0.215
    # Mean over the batch (eq 3's 1/N_t Σ): (1/24 + 0.215) / 2 = 0.128333…
    ln2, ln3 = math.log(2), math.log(3)
    s = torch.tensor([[0.0, 0.0, 0.0], [2 * ln3, 0.0, 0.0]])
    t = torch.tensor([[2 * ln2, 0.0, 0.0], [0.0, 0.0, 2 * ln2]])
    assert cd_loss(s, t, mu=2.0).item() == pytest.approx((1 / 24 + 0.215) / 2, rel=1e-6)
    # One sample alone is its own mean; the loss is symmetric in student and teacher.
    assert cd_loss(s[:1], t[:1], mu=2.0).item() == pytest.approx(1 / 24, rel=1e-6)
    assert cd_loss(t, s, mu=2.0).item() == pytest.approx((1 / 24 + 0.215) / 2, rel=1e-6)


def test_cd_loss_divides_the_logits_by_mu():
    # μ = 1 on sample 1 of the test above: softmax(t) = (4, 1, 1)/6 = (2/3, 1/6, 1/6) against (1/3, 1/3, 1/3):
    # diff = (-1/3, 1/6, 1/6), ‖diff‖² = 1/9 + 2/36 = 1/6. A larger μ smooths: 1/24 at μ = 2.
    s, t = torch.zeros(1, 3), torch.tensor([[2 * math.log(2), 0.0, 0.0]])
    assert cd_loss(s, t, mu=1.0).item() == pytest.approx(1 / 6, rel=1e-6)
    assert cd_loss(s, s + 5.0, mu=2.0).item() == pytest.approx(0.0, abs=1e-12)  # softmax ignores a shift


# --- eq 4: L_ED ---------------------------------------------------------------------------------


def test_ed_loss_is_one_minus_the_batch_mean_cosine():
    # (B, C, H, W) = (1, 2, 1, 1): the flattened encoder outputs are 2-vectors.
    def v(*xs):
        return torch.tensor(xs, dtype=torch.float32).view(1, -1, 1, 1)

    assert ed_loss(v(1, 0), v(0, 1)).item() == pytest.approx(1.0, abs=1e-7)  # orthogonal: cos 0
    assert ed_loss(v(1, 2), v(2, 4)).item() == pytest.approx(0.0, abs=1e-7)  # parallel: cos 1, length ignored
    assert ed_loss(v(1, 2), v(-1, -2)).item() == pytest.approx(2.0, abs=1e-7)  # opposite: cos −1
    assert ed_loss(v(3, 4), v(1, 0)).item() == pytest.approx(0.4, abs=1e-7)  # 3-4-5: cos = 3/5
    # Batch of two, orthogonal and 3-4-5: mean cos = (0 + 0.6)/2 = 0.3 -> 1 − 0.3 = 0.7.
    # (Eq 4 as printed sums the cosines: 1 − 0.6 = 0.4; the code documents taking the mean.)
    s = torch.cat([v(1, 0), v(3, 4)])
    t = torch.cat([v(0, 1), v(1, 0)])
    assert ed_loss(s, t).item() == pytest.approx(0.7, abs=1e-7)


def test_ed_loss_flattens_the_whole_feature_map():
    # One channel, 2×2 map: f_s = [[3, 0], [0, 4]], f_t = [[1, 0], [0, 0]].
    # Flattened: (3, 0, 0, 4)·(1, 0, 0, 0) = 3, norms 5 and 1 -> cos 3/5 -> L = 0.4.
    # (A per-pixel cosine over channels would give something else: with C = 1 it is a sign.)
    s = torch.tensor([[[[3.0, 0.0], [0.0, 4.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert ed_loss(s, t).item() == pytest.approx(0.4, abs=1e-7)


# --- the Distiller ------------------------------------------------------------------------------


def test_default_teacher_is_a_frozen_copy_of_the_initial_backbone(r18_file):
    model = _student(weights=str(r18_file))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    keys_before = set(model.state_dict())
    d = Distiller(DistillConfig(type="ed"), model, ModelConfig(name="simple_baseline", weights=str(r18_file)))
    assert _same_state(d.teacher.state_dict(), before)
    assert _same_state(d.teacher.state_dict(), torch.load(r18_file, weights_only=True))  # the source model
    assert not d.teacher.training
    assert not any(p.requires_grad for p in d.teacher.parameters())
    # Not a submodule: the optimiser, the checkpoint and model.train() never see the teacher.
    assert all(m is not d.teacher for m in model.modules())
    assert set(model.state_dict()) == keys_before
    model.train()
    assert not d.teacher.training


def test_teacher_weights_file_is_loaded(r18_file):
    model = _student()  # random init, not the file
    d = Distiller(DistillConfig(type="ed", teacher=str(r18_file)), model, ModelConfig(name="simple_baseline"))
    expected = torch.load(r18_file, weights_only=True)
    assert _same_state(d.teacher.state_dict(), expected)
    assert not torch.equal(model.backbone.conv1.weight, expected["conv1.weight"])
    assert not d.teacher.training and not any(p.requires_grad for p in d.teacher.parameters())


def test_teacher_may_be_a_trial_checkpoint(tmp_path):
    # A trained SimpleBaseline's checkpoint ({"model": state dict}) as teacher: its backbone part is used.
    source = _student()
    with torch.no_grad():
        source.backbone.conv1.weight.mul_(2)
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    d = Distiller(
        DistillConfig(type="cd", teacher=str(tmp_path / "checkpoint.pt")),
        _student(),
        ModelConfig(name="simple_baseline"),
    )
    assert _same_state(d.teacher.state_dict(), source.backbone.state_dict())


def test_cd_unfreezes_the_student_classifier_and_ed_does_not():
    cfg = ModelConfig(name="simple_baseline")
    m_ed, m_cd, m_both = _student(), _student(), _student()
    assert not any(p.requires_grad for p in m_ed.backbone.fc.parameters())  # frozen by build_backbone
    d_ed = Distiller(DistillConfig(type="ed"), m_ed, cfg)
    d_cd = Distiller(DistillConfig(type="cd"), m_cd, cfg)
    d_both = Distiller(DistillConfig(type="both"), m_both, cfg)
    assert not any(p.requires_grad for p in m_ed.backbone.fc.parameters())
    assert all(p.requires_grad for p in m_cd.backbone.fc.parameters())
    assert all(p.requires_grad for p in m_both.backbone.fc.parameters())
    for d in (d_ed, d_cd, d_both):  # the teacher's head stays frozen either way
        assert not any(p.requires_grad for p in d.teacher.parameters())


def test_loss_needs_a_student_forward_first_and_only_once():
    model = _student()
    d = Distiller(DistillConfig(type="ed"), model, ModelConfig(name="simple_baseline"))
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(RuntimeError, match="run the student model on the batch first"):
        d.loss(x)
    model(x)
    d.loss(x)
    with pytest.raises(RuntimeError, match="run the student model on the batch first"):
        d.loss(x)  # a stale C5 is not reused
    d.close()
    model(x)
    with pytest.raises(RuntimeError):
        d.loss(x)  # the hook is gone


def test_ed_gradient_reaches_the_student_backbone_not_the_teacher():
    torch.manual_seed(1)
    model = _student().train()  # train-mode BN: the student's C5 differs from the eval-mode teacher's
    d = Distiller(DistillConfig(type="ed"), model, ModelConfig(name="simple_baseline"))
    x = torch.randn(2, 1, 32, 32)
    model(x)
    loss = d.loss(x)
    assert loss.item() > 0
    loss.backward()
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        g = model.backbone.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name
    assert model.backbone.fc.weight.grad is None  # ed does not use the classifier
    assert model.head.weight.grad is None  # L_ED does not touch the decoder
    assert all(p.grad is None for p in d.teacher.parameters())


def test_teacher_is_unchanged_by_training_the_student():
    torch.manual_seed(2)
    model = _student().train()
    d = Distiller(DistillConfig(type="both"), model, ModelConfig(name="simple_baseline"))
    teacher0 = {k: v.clone() for k, v in d.teacher.state_dict().items()}  # weights and BN running stats
    student0 = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, target = torch.randn(2, 1, 32, 32), torch.rand(2, 2, 8, 8)
    for _ in range(2):
        heads = model(x)
        loss = ((heads[0] - target) ** 2).mean() + 1.0 * d.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model.backbone.conv1.weight, student0["conv1.weight"])
    assert not torch.equal(model.backbone.fc.weight, student0["fc.weight"])  # cd trains g_θ2^t
    assert not torch.equal(model.backbone.bn1.running_mean, student0["bn1.running_mean"])
    assert _same_state(d.teacher.state_dict(), teacher0)
    assert not d.teacher.training


@pytest.mark.parametrize("backbone", SMALLEST)
def test_distiller_works_for_each_backbone_family(backbone):
    model = _student(backbone)
    d = Distiller(DistillConfig(type="both"), model, ModelConfig(name="simple_baseline", backbone=backbone))
    assert _same_state(d.teacher.state_dict(), model.backbone.state_dict())
    x = torch.randn(2, 1, 32, 32)
    # In eval mode the untrained student *is* its teacher: L_CD = 0 and cos = 1.
    model.eval()
    model(x)
    assert d.loss(x).item() == pytest.approx(0.0, abs=1e-5)
    # In train mode (BN batch statistics, VGG dropout) they differ, and L_D = L_CD + L_ED trains
    # the student's encoder and classifier.
    model.train()
    model(x)
    loss = d.loss(x)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    first_conv = next(p for n, p in model.backbone.named_parameters() if p.dim() == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    head = [p for p in model.backbone.classifier_head().parameters()]
    assert all(p.grad is not None for p in head) and head[-1].grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())


def test_distiller_works_on_farnet():
    # FARNet reads every backbone level; the hook still captures C5 of its single backbone pass.
    from trainables.models.farnet import FARNet

    torch.manual_seed(0)
    model = FARNet(2, backbone="resnet18", width=0.125).train()
    d = Distiller(DistillConfig(type="both"), model, ModelConfig(name="farnet", backbone="resnet18"))
    x = torch.randn(2, 1, 32, 32)
    heads = model(x)
    loss = sum(h.square().mean() for h in heads) + d.loss(x)
    loss.backward()
    assert model.backbone.fc.weight.grad.abs().sum() > 0 and model.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())


def test_distiller_ed_term_is_ed_loss_of_the_captured_c5():
    # type ed on a fixed batch: L_D must equal ed_loss(student C5, teacher C5) computed outside.
    model = _student().eval()
    d = Distiller(DistillConfig(type="ed"), model, ModelConfig(name="simple_baseline"))
    with torch.no_grad():
        for p in model.backbone.layer4.parameters():  # move the student away from its teacher
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 1, 32, 32)
    model(x)
    got = d.loss(x)
    with torch.no_grad():
        expected = ed_loss(model.backbone(x).levels[-1], d.teacher(x).levels[-1])
    assert got.item() == pytest.approx(expected.item(), rel=1e-6) and got.item() > 1e-4


# --- config checks ------------------------------------------------------------------------------


def test_distill_problems_name_the_field_and_the_fix(r18_file, tmp_path):
    sb = ModelConfig(name="simple_baseline", weights=str(r18_file))
    assert distill_problems(DistillConfig(type="none", lambda_=-1.0), ModelConfig(name="unet")) == []
    assert distill_problems(DistillConfig(type="both"), sb) == []

    (msg,) = distill_problems(DistillConfig(type="cd"), ModelConfig(name="unet"))
    assert msg.startswith("distill.type: cd needs a model with a pretrained backbone") and "U-Net" in msg

    (msg,) = distill_problems(DistillConfig(type="ed", lambda_=-0.5), sb)
    assert msg == "distill.lambda: must be ≥ 0, got -0.5"
    (msg,) = distill_problems(DistillConfig(type="ed", lambda_=float("nan")), sb)
    assert msg.startswith("distill.lambda: must be ≥ 0")

    for bad_mu in (0.0, -2.0):
        (msg,) = distill_problems(DistillConfig(type="cd", mu=bad_mu), sb)
        assert msg == f"distill.mu: the softmax temperature must be > 0, got {bad_mu}"
    assert distill_problems(DistillConfig(type="ed", mu=0.0), sb) == []  # μ only enters L_CD

    missing = tmp_path / "no_such_teacher.pt"
    (msg,) = distill_problems(DistillConfig(type="ed", teacher=str(missing)), sb)
    assert msg.startswith(f"distill.teacher: {missing} does not exist")

    (msg,) = distill_problems(DistillConfig(type="cd"), ModelConfig(name="simple_baseline", weights="none"))
    assert msg.startswith("distill.teacher: the default teacher is the student's initial backbone")
    assert "model.weights is none" in msg
    # A teacher file makes random student weights fine.
    assert distill_problems(DistillConfig(type="cd", teacher=str(r18_file)), ModelConfig(name="simple_baseline")) == []


def test_lambda_is_read_from_its_yaml_name():
    cfg = TrialConfig.from_dict({"distill": {"type": "ed", "lambda": 0.5}})
    assert cfg.distill.lambda_ == 0.5 and cfg.to_dict()["distill"]["lambda"] == 0.5


# --- distill.type none is standard fine-tuning ---------------------------------------------------

TIMING = {"cost/latency_ms", "cost/epoch_s"}  # wall-clock figures, different on every run


def _sb_config(root, phantom: dict, weights, **overrides) -> TrialConfig:
    """The tiny phantom trial (tests/conftest.py) on a SimpleBaseline-resnet18 at 32×32."""
    return TrialConfig.from_dict(
        apply_overrides(
            {
                "model": {"name": "simple_baseline", "backbone": "resnet18", "weights": str(weights), "width": WIDTH},
                "data": {"dataset": "phantom", "root": str(root), "input_size": [32, 32], "phantom": phantom},
                "target": {"sigma": 2.0},
                "optim": {"lr": 3e-3},
                "train": {"epochs": 2, "batch_size": 4, "seed": 1, "device": "cpu"},
            },
            overrides,
        )
    )


def _run(cfg: TrialConfig) -> list[dict]:
    out = []
    fit(cfg, lambda metrics, checkpoint_dir: out.append(dict(metrics)))
    return out


def _untimed(ms: list[dict], drop=()) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING and k not in drop} for m in ms]


@pytest.fixture(scope="module")
def finetune(tmp_path_factory, tiny_phantom, r18_file):
    """(make_config, metrics of plain fine-tuning): two epochs with distill.type none, run once."""
    root = tmp_path_factory.mktemp("fit") / "phantom"

    def make(**overrides) -> TrialConfig:
        return _sb_config(root, tiny_phantom, r18_file, **overrides)

    return make, _run(make())


def test_type_none_ignores_the_other_distill_fields(finetune, tmp_path):
    make, plain = finetune
    other = _run(make(**{"distill.lambda": 5.0, "distill.mu": 7.0, "distill.teacher": str(tmp_path / "unused.pt")}))
    assert [m["epoch"] for m in plain] == [1, 2]
    assert "train/loss_distill" not in plain[0]
    assert _untimed(plain) == _untimed(other)


def test_cd_with_lambda_zero_is_standard_fine_tuning(finetune, r18_file):
    # L = L_R + 0·L_CD: the distillation adds exactly zero gradient to the backbone, and Adam
    # (weight_decay 0) does not move the newly trainable classifier, which the heatmaps never use.
    make, plain = finetune
    cd0, fc = [], []

    def report(metrics, checkpoint_dir):
        cd0.append(dict(metrics))
        state = torch.load(checkpoint_dir / CHECKPOINT_FILE, weights_only=True)
        fc.append(state["model"]["backbone.fc.weight"])

    fit(make(**{"distill.type": "cd", "distill.lambda": 0.0}), report)
    assert [m["epoch"] for m in cd0] == [1, 2]
    assert torch.equal(fc[-1], torch.load(r18_file, weights_only=True)["fc.weight"])  # trainable, yet unmoved
    assert all(m["train/loss_distill"] > 0 for m in cd0)  # measured, just weighted by 0
    assert _untimed(plain) == _untimed(cd0, drop={"train/loss_distill"})


# --- λ's scale: the paper's λ = 0.002 balances eq 1's L_R ---------------------------------------


def test_lambda_weighs_L_D_against_eq1_regression_loss():
    """`distill.lambda` is the paper's λ (§3: 0.002), which weighs L_D against eq 1's
    L_R = 1/N Σ_i ‖G_i − ĥ_i‖²_F, a *sum* over one image's K·H·W heatmap entries. Our L_R is the
    per-entry mean, so distill_term divides λ·L_D by K·H·W: ours = (eq 1 + λ·L_D) / (K·H·W).
    """
    # B = 2, K = 2, 4×4 heatmaps, prediction 0, target 1 everywhere:
    # eq 1: each image has ‖G − ĥ‖²_F = 2·4·4 = 32 entries of (1 − 0)², mean over the 2 images = 32.
    # With L_D = 0.5 and λ = 0.002: eq 2 = 32 + 0.001 = 32.001; divided by K·H·W = 32 -> 1.00003125.
    pred, target = torch.zeros(2, 2, 4, 4), torch.ones(2, 2, 4, 4)
    l_r = LOSSES["mse"](pred, target, LossConfig(), None).mean()  # as trainer.fit composes L_R
    total = l_r + distill_term(0.002, torch.tensor(0.5), [pred])
    assert l_r.item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(32.001 / 32, abs=1e-7)  # float32
