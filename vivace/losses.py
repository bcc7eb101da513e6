"""Losses that accept hard labels (B,) or soft targets (B, C), so mixing composes with smoothing."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flags import Range, knob


SMOOTHING = Range(0.0, 1.0, high_open=True)  # label smoothing's epsilon: the field's range and the losses'


@dataclass
class LossSpec:
    """The Recipe's loss: `make_loss`'s arguments."""

    label_smoothing: float = knob(0.0, "epsilon of label smoothing", range=SMOOTHING)
    gce_q: float = knob(0.0, "generalized cross-entropy's q, for partly wrong labels: a sample's gradient is "
                             "weighted by p(label)^q, so labels the model disagrees with count less; "
                             "0 = cross-entropy, 1 = mean absolute error", range=Range(0.0, 1.0))


def make_loss(label_smoothing: float = 0.0, gce_q: float = 0.0, multi_label: bool = False) -> nn.Module:
    """Cross-entropy, with label smoothing when `label_smoothing` > 0, or its generalized form when
    `gce_q` > 0; for several labels per image binary cross-entropy on each class (`MultiLabelBCE`),
    smoothed the same way."""
    if multi_label:
        if gce_q:
            raise ValueError(f"gce_q={gce_q} is for one label per image; several labels train with binary "
                             "cross-entropy: drop gce_q")
        return MultiLabelBCE(label_smoothing)
    if gce_q:
        return GeneralizedCrossEntropy(gce_q, label_smoothing)
    return LabelSmoothingCrossEntropy(label_smoothing) if label_smoothing else CrossEntropy()


class MultiLabelBCE(nn.Module):
    """Binary cross-entropy with logits against multi-hot (or mixed) targets (B, C).

    Label smoothing in its multi-label form: each class's target moves eps/2 towards 0.5, so a
    1 becomes 1 - eps/2 and a 0 becomes eps/2 (fastai's BCE has none; timm's BinaryCrossEntropy
    smooths this way).
    """

    def __init__(self, eps: float = 0.0):
        super().__init__()
        SMOOTHING.check("MultiLabelBCE eps", eps)
        self.eps = eps

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.float() * (1 - self.eps) + self.eps / 2
        return F.binary_cross_entropy_with_logits(logits.float(), target)


def soft_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of `logits` (B, C) against class indices (B,) or soft targets (B, C)."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    n_classes = logits.shape[-1]
    # Smoothing a soft target is the same linear blend as smoothing a one-hot one.
    target = target * (1 - label_smoothing) + label_smoothing / n_classes
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class CrossEntropy(nn.Module):
    """Cross-entropy over the last dimension; accepts hard or soft targets."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return soft_cross_entropy(logits.flatten(0, -2), _flat_target(target, logits))


class LabelSmoothingCrossEntropy(nn.Module):
    """(1-eps)*NLL + eps*mean over classes of -log p: CE against targets 1-eps+eps/N and eps/N."""

    def __init__(self, eps: float = 0.1):
        super().__init__()
        SMOOTHING.check("LabelSmoothingCrossEntropy eps", eps)
        self.eps = eps

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return soft_cross_entropy(logits.flatten(0, -2), _flat_target(target, logits), self.eps)


class GeneralizedCrossEntropy(nn.Module):
    """Zhang and Sabuncu's L_q (NeurIPS 2018): (1 - p^q) / q of the target class, between cross-entropy
    (q -> 0) and mean absolute error (q = 1), robust to wrong labels.

    Its gradient is cross-entropy's times p^q: once the model is partly right, a sample whose label
    it finds unlikely (often a wrong label) pulls far less than one it agrees with. Soft targets
    (smoothing, Mixup) weigh each class's term: sum_c t_c (1 - p_c^q) / q.
    """

    def __init__(self, q: float = 0.7, eps: float = 0.0):
        super().__init__()
        Range(0.0, 1.0, low_open=True).check("GeneralizedCrossEntropy q", q)
        SMOOTHING.check("GeneralizedCrossEntropy eps", eps)
        self.q, self.eps = q, eps

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.flatten(0, -2).float()
        target = _flat_target(target, logits)
        n_classes = logits.shape[-1]
        if target.ndim == 1:
            target = F.one_hot(target, n_classes).float()
        target = target * (1 - self.eps) + self.eps / n_classes
        one_minus_p_q = -torch.expm1(self.q * F.log_softmax(logits, dim=-1))  # 1 - p^q, exact for a small q
        return (target * one_minus_p_q).sum(-1).mean() / self.q


def smoothed_targets(target: Tensor, n_classes: int, eps: float) -> Tensor:
    """The soft targets label smoothing trains towards: 1-eps+eps/N on the label, eps/N elsewhere."""
    return F.one_hot(target, n_classes).float() * (1 - eps) + eps / n_classes


def _flat_target(target: Tensor, logits: Tensor) -> Tensor:
    # Hard targets follow the logits' leading dims; soft ones carry the class dim too.
    return target.flatten() if target.ndim == logits.ndim - 1 else target.flatten(0, -2)
