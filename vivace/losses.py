"""Losses that accept hard labels (B,) or soft targets (B, C), so mixing composes with smoothing."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .flags import Range, knob


SMOOTHING = Range(0.0, 1.0, high_open=True)  # label smoothing's epsilon: the field's range and the losses'


@dataclass
class LossSpec:
    """The Recipe's loss: `make_loss`'s arguments."""

    label_smoothing: float = knob(0.0, "epsilon of label smoothing", range=SMOOTHING)


def make_loss(label_smoothing: float = 0.0, multi_label: bool = False) -> nn.Module:
    """Cross-entropy, with label smoothing when `label_smoothing` > 0; for several labels per image
    binary cross-entropy on each class (`MultiLabelBCE`), smoothed the same way."""
    if multi_label:
        return MultiLabelBCE(label_smoothing)
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


def smoothed_targets(target: Tensor, n_classes: int, eps: float) -> Tensor:
    """The soft targets label smoothing trains towards: 1-eps+eps/N on the label, eps/N elsewhere."""
    return F.one_hot(target, n_classes).float() * (1 - eps) + eps / n_classes


def _flat_target(target: Tensor, logits: Tensor) -> Tensor:
    # Hard targets follow the logits' leading dims; soft ones carry the class dim too.
    return target.flatten() if target.ndim == logits.ndim - 1 else target.flatten(0, -2)
