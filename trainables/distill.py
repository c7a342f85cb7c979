"""Cross-task distillation (cross-task paper §2.3, eqs 2–4), `distill.*`.

A frozen teacher, by default a copy of the student's backbone and ImageNet classifier as they
are before the first step (the pretrained source model), runs on the same batch in inference
mode. The student's encoder output is captured by a forward hook on its backbone, so models
need no change:

    distiller = Distiller(cfg.distill, model, cfg.model)    # before building the optimiser
    heads = model(images)
    loss = regression + distill_term(cfg.distill.lambda_, distiller.loss(images), heads)   # eq 2

`distill.type`: none (standard fine-tuning: no teacher is built), cd (L_CD on the classifier
outputs), ed (L_ED on the encoder outputs), both (L_CD + L_ED).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.config import DistillConfig, ModelConfig
from trainables.models.backbones import Backbone, build_backbone, weights_problem

# Which terms each `distill.type` adds up.
DISTILL_TERMS = {"none": (), "cd": ("cd",), "ed": ("ed",), "both": ("cd", "ed")}


def cd_loss(student_logits: Tensor, teacher_logits: Tensor, mu: float) -> Tensor:
    """L_CD, eq 3: mean over the batch of ‖softmax(s/μ) − softmax(t/μ)‖²₂. (B, C) ×2 -> scalar."""
    diff = F.softmax(student_logits / mu, dim=1) - F.softmax(teacher_logits / mu, dim=1)
    return (diff**2).sum(dim=1).mean()


def ed_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """L_ED, eq 4: 1 − cos(f_s, f_t) of the flattened encoder outputs, averaged over the batch.

    Eq 4 writes a sum over the N_t images; we take the mean so that the loss stays in [0, 2]
    and λ does not depend on the batch size. (B, C, H, W) ×2 -> scalar.
    """
    cos = F.cosine_similarity(student_features.flatten(1), teacher_features.flatten(1), dim=1)
    return 1 - cos.mean()


def distill_term(lam: float, distill_loss: Tensor, heads: list[Tensor]) -> Tensor:
    """λ·L_D on the scale of our L_R, so that λ means what it means in the paper.

    Eq 1's L_R sums the squared error over one image's K·H·W heatmap entries; ours averages
    them (losses.py), i.e. is eq 1 divided by n = K·H·W of the finest head. Dividing λ·L_D by
    the same n makes our L_R + λ·L_D/n exactly (eq 1 + λ·L_D)/n: eq 2 up to a constant factor,
    so the paper's λ = 0.002 keeps its balance between the terms.
    """
    return lam * distill_loss / heads[-1][0].numel()


class Distiller:
    """Holds the frozen teacher and computes L_D for the student's latest forward pass."""

    def __init__(self, cfg: DistillConfig, model: nn.Module, model_cfg: ModelConfig):
        self.terms = DISTILL_TERMS[cfg.type]
        self.mu = cfg.mu
        student: Backbone = model.backbone
        if cfg.teacher:
            teacher = build_backbone(model_cfg.backbone, cfg.teacher).to(next(student.parameters()).device)
        else:
            teacher = copy.deepcopy(student)
        self.teacher = teacher.eval().requires_grad_(False)
        if "cd" in self.terms:
            student.classifier_head().requires_grad_(True)  # g_θ2^s is part of the student (Fig 1a)
        self._c5: Tensor | None = None
        self._hook = student.register_forward_hook(self._capture)
        self._student = student

    def _capture(self, module, inputs, features) -> None:
        self._c5 = features.levels[-1]

    def loss(self, images: Tensor) -> Tensor:
        """L_D for the batch the student just saw: the sum of this type's terms. (B, 1, H, W) -> scalar."""
        if self._c5 is None:
            raise RuntimeError("Distiller.loss: run the student model on the batch first")
        with torch.no_grad():  # not inference_mode: autograd must be able to save these for backward
            t_c5 = self.teacher(images).levels[-1]
            t_logits = self.teacher.classify(t_c5) if "cd" in self.terms else None
        # Under autocast (train.precision) the features and logits may be bf16/fp16: the terms are fp32.
        total = images.new_zeros((), dtype=torch.float32)
        if "cd" in self.terms:
            total = total + cd_loss(self._student.classify(self._c5).float(), t_logits.float(), self.mu)
        if "ed" in self.terms:
            total = total + ed_loss(self._c5.float(), t_c5.float())
        self._c5 = None  # one loss per forward: a stale C5 must not be reused
        return total

    def close(self) -> None:
        self._hook.remove()


def distill_problems(cfg: DistillConfig, model_cfg: ModelConfig) -> list[str]:
    """What makes a distillation config unusable, as messages naming the config path."""
    if cfg.type not in DISTILL_TERMS:
        return [f"distill.type: unknown {cfg.type!r}; choose one of {sorted(DISTILL_TERMS)}"]
    if cfg.type == "none":
        return []
    out = []
    if model_cfg.name == "unet":
        out.append(
            f"distill.type: {cfg.type} needs a model with a pretrained backbone and classifier "
            "(model.name farnet or simple_baseline); the U-Net has none"
        )
    if not cfg.lambda_ >= 0:
        out.append(f"distill.lambda: must be ≥ 0, got {cfg.lambda_}")
    if "cd" in DISTILL_TERMS[cfg.type] and not cfg.mu > 0:
        out.append(f"distill.mu: the softmax temperature must be > 0, got {cfg.mu}")
    if out:
        return out
    if cfg.teacher:
        problem = weights_problem(model_cfg.backbone, cfg.teacher)
        if problem:
            out.append(problem.renamed("distill.teacher"))
    elif model_cfg.weights == "none":
        out.append(
            "distill.teacher: the default teacher is the student's initial backbone, but model.weights "
            "is none (random weights); set model.weights to imagenet or a weights file, or "
            "distill.teacher to a weights file"
        )
    return out
