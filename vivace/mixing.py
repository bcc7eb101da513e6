"""Mixup and CutMix: pure functions returning soft targets (the callbacks that apply them: callbacks.py).

Both draw one lambda *per item* (as fastai v2's MixUp does) and pair every item with a random
permutation of the batch. Targets come back soft, (B, C) summing to 1, so any loss linear in
the target (cross-entropy, label-smoothed cross-entropy) gives exactly the two-term mixture
lam * L(pred, y) + (1 - lam) * L(pred, y[perm]) with no special loss handling.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def check_alpha(name: str, alpha: float) -> None:
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"{name}={alpha} must be a finite number > 0")


def sample_beta(n: int, alpha: float, generator: torch.Generator | None = None) -> Tensor:
    """n draws of Beta(alpha, alpha) on the CPU, reproducible from a torch generator, (n,)."""
    check_alpha("alpha", alpha)
    # torch's Beta sampler takes no generator; seed numpy's from ours (CPU only, no device sync).
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n)).float()


def mixup_params(n: int, alpha: float = 0.4,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Per-item lam = max(l, 1 - l), l ~ Beta(alpha, alpha), and a partner permutation: (n,), (n,)."""
    lam = sample_beta(n, alpha, generator)
    lam = torch.maximum(lam, 1 - lam)  # the item keeps its own label as the majority
    return lam, torch.randperm(n, generator=generator)


def soft_targets(y: Tensor, n_classes: int) -> Tensor:
    """Class indices (B,) -> one-hot float (B, C); soft targets (B, C) pass through as float."""
    if y.ndim == 2:
        if y.shape[1] != n_classes:
            raise ValueError(f"soft targets have {y.shape[1]} classes, n_classes={n_classes}")
        return y.float()
    if y.ndim != 1:
        raise ValueError(f"targets must be indices (B,) or soft (B, C), got shape {tuple(y.shape)}")
    return F.one_hot(y, n_classes).float()


def mix_targets(y: Tensor, n_classes: int, lam: Tensor, perm: Tensor) -> Tensor:
    """lam * onehot(y) + (1 - lam) * onehot(y[perm]), (B, C)."""
    t = soft_targets(y, n_classes)  # (B, C)
    lam = lam.to(t.device, non_blocking=True).view(-1, 1)
    return torch.lerp(t[perm.to(t.device)], t, lam)


def mixup(x: Tensor, y: Tensor, n_classes: int, alpha: float = 0.4,
          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Mixup: lam*x + (1-lam)*x[perm] per item; returns (x_mixed, soft targets (B, C))."""
    _check_float(x)
    lam, perm = mixup_params(x.shape[0], alpha, generator)
    w = lam.to(x.device, x.dtype, non_blocking=True).view(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1)
    x_mixed = torch.lerp(x[perm.to(x.device)], x, w)  # one fused pass; keeps channels_last
    return x_mixed, mix_targets(y, n_classes, lam, perm)


def cutmix_boxes(n: int, height: int, width: int, alpha: float = 1.0,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Per-item boxes (n, 4) as (top, bottom, left, right) pixels, and lam = 1 - box area fraction."""
    cut = (1 - sample_beta(n, alpha, generator)).sqrt()  # box side as a fraction of the image side
    h, w = (cut * height).floor(), (cut * width).floor()
    cy = torch.randint(0, height, (n,), generator=generator)  # centres anywhere; boxes clip
    cx = torch.randint(0, width, (n,), generator=generator)
    top, left = (cy - h // 2).clamp(0, height), (cx - w // 2).clamp(0, width)
    bottom, right = (cy - h // 2 + h).clamp(0, height), (cx - w // 2 + w).clamp(0, width)
    boxes = torch.stack([top, bottom, left, right], dim=1).long()
    lam = 1 - (bottom - top) * (right - left) / (height * width)  # from the clipped box
    return boxes, lam.float()


def box_masks(boxes: Tensor, height: int, width: int, device: torch.device) -> Tensor:
    """Boolean masks (B, 1, H, W), True inside each item's box."""
    b = boxes.to(device, non_blocking=True)
    rows = torch.arange(height, device=device).view(1, height)
    cols = torch.arange(width, device=device).view(1, width)
    in_rows = (rows >= b[:, :1]) & (rows < b[:, 1:2])  # (B, H)
    in_cols = (cols >= b[:, 2:3]) & (cols < b[:, 3:4])  # (B, W)
    return in_rows[:, None, :, None] & in_cols[:, None, None, :]


def cutmix(x: Tensor, y: Tensor, n_classes: int, alpha: float = 1.0,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """CutMix: paste a box from the partner image per item; lam from the clipped box area."""
    _check_float(x)
    n, _, height, width = x.shape
    boxes, lam = cutmix_boxes(n, height, width, alpha, generator)
    perm = torch.randperm(n, generator=generator)
    mask = box_masks(boxes, height, width, x.device)  # (B, 1, H, W)
    x_mixed = torch.where(mask, x[perm.to(x.device)], x)  # one pass over the batch
    return x_mixed, mix_targets(y, n_classes, lam, perm)


def mix_loss(loss_func: Callable[[Tensor, Tensor], Tensor], pred: Tensor, y: Tensor,
             y_perm: Tensor, lam: Tensor) -> Tensor:
    """Two-term mixed loss, mean of lam*L(pred, y) + (1-lam)*L(pred, y_perm); L per item (B,)."""
    lam = lam.to(pred.device, pred.dtype)
    return (lam * loss_func(pred, y) + (1 - lam) * loss_func(pred, y_perm)).mean()


def _check_float(x: Tensor) -> None:
    if not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f"mixing needs a float batch (B, ...), got {x.dtype} {tuple(x.shape)}")
