"""Metrics over whole-epoch predictions: logits (N, C) and labels (N,) or soft targets (N, C)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _labels(target: Tensor) -> Tensor:
    return target.argmax(-1) if target.ndim == 2 else target


def accuracy(preds: Tensor, target: Tensor) -> Tensor:
    """Fraction of rows whose arg-max matches the label."""
    return (preds.argmax(-1) == _labels(target)).float().mean()


def error_rate(preds: Tensor, target: Tensor) -> Tensor:
    """1 - accuracy."""
    return 1 - accuracy(preds, target)


def top_k_accuracy(preds: Tensor, target: Tensor, k: int = 5) -> Tensor:
    """Fraction of rows whose label is among the k highest scores."""
    top = preds.topk(min(k, preds.shape[-1]), dim=-1).indices  # (N, k)
    return (top == _labels(target)[:, None]).any(-1).float().mean()


def top5_accuracy(preds: Tensor, target: Tensor) -> Tensor:
    """Top-5 accuracy (a metric for the Learner, which names it by the function)."""
    return top_k_accuracy(preds, target, 5)


def nll(logits: Tensor, target: Tensor) -> Tensor:
    """Mean negative log-likelihood of the labels under softmax(logits)."""
    return F.cross_entropy(logits.float(), _labels(target))


def _confidence_bins(conf: Tensor, n_bins: int) -> Tensor:
    """Bin index per confidence; NaN ones (non-finite logits) go to bin 0 and make the result NaN."""
    return (conf.nan_to_num(0.0) * n_bins).long().clamp(0, n_bins - 1)


def calibration_error(logits: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    """Expected calibration error: bin-weighted |accuracy - confidence| over confidence bins."""
    conf, pred = F.softmax(logits.float(), -1).max(-1)
    correct = (pred == _labels(target)).float()
    bins = _confidence_bins(conf, n_bins)
    count = torch.bincount(bins, minlength=n_bins).float()
    gap = torch.bincount(bins, weights=correct - conf, minlength=n_bins).abs()
    return gap.sum() / count.sum().clamp(min=1)


def reliability_bins(logits: Tensor, target: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin (mean confidence, accuracy, count) for a reliability diagram."""
    conf, pred = F.softmax(logits.float(), -1).max(-1)
    correct = (pred == _labels(target)).float()
    bins = _confidence_bins(conf, n_bins)
    count = torch.bincount(bins, minlength=n_bins).float()
    safe = count.clamp(min=1)
    mean_conf = torch.bincount(bins, weights=conf, minlength=n_bins) / safe
    acc = torch.bincount(bins, weights=correct, minlength=n_bins) / safe
    return mean_conf, acc, count


METRICS = {
    "accuracy": accuracy,
    "error_rate": error_rate,
    "top5_accuracy": top_k_accuracy,
    "nll": nll,
    "ece": calibration_error,
}
