"""Metrics over whole-epoch predictions: logits (N, C) and labels (N,) or soft targets (N, C)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .flags import Range, knob


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


def probabilities(logits: Tensor, multi_label: bool = False) -> Tensor:
    """Softmax over the classes; for several labels per image, a sigmoid per class."""
    return logits.float().sigmoid() if multi_label else logits.float().softmax(-1)


def accuracy_multi(preds: Tensor, target: Tensor, thresh: float = 0.5) -> Tensor:
    """fastai's accuracy_multi: the fraction of (image, class) pairs where sigmoid > thresh matches the target."""
    return ((preds.float().sigmoid() > thresh) == (target > 0.5)).float().mean()


def f1_macro(preds: Tensor, target: Tensor, thresh: float = 0.5) -> Tensor:
    """Macro F-score at `thresh`: the mean over classes of 2 TP / (2 TP + FP + FN) (0 where a class is absent and never predicted)."""
    return per_class_scores(preds, target, thresh)[:, 2].mean()


def per_class_scores(preds: Tensor, target: Tensor, thresh: float = 0.5) -> Tensor:
    """Several labels per image: (C, 4) precision, recall, F-score and support per class at `thresh`."""
    predicted, actual = preds.float().sigmoid() > thresh, target > 0.5
    tp = (predicted & actual).sum(0).float()
    precision = tp / predicted.sum(0).clamp(min=1)
    recall = tp / actual.sum(0).clamp(min=1)
    f1 = 2 * tp / (predicted.sum(0) + actual.sum(0)).clamp(min=1)
    return torch.stack([precision, recall, f1, actual.sum(0).float()], dim=1)


THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # where evaluate and the report show the scores
# Per-class lists a person reads (the report, `vivace evaluate`): every class up to MAX_LISTED_CLASSES;
# above (ImageNet's 1,000), the N_WORST_CLASSES worst first, the rest in the report, folded.
MAX_LISTED_CLASSES = 30
N_WORST_CLASSES = 20


def lowest_f_scores(scores: Tensor, n: int = N_WORST_CLASSES) -> list[int]:
    """The classes of the `n` lowest F-scores in `per_class_scores`' (C, 4) rows, lowest first (ties in vocab order)."""
    return scores[:, 2].argsort(stable=True)[:n].tolist()


def threshold_sweep(preds: Tensor, target: Tensor) -> list[tuple[float, float, float]]:
    """Several labels per image: (threshold, accuracy_multi, macro F-score) at each of THRESHOLDS."""
    return [(t, float(accuracy_multi(preds, target, t)), float(f1_macro(preds, target, t))) for t in THRESHOLDS]


@dataclass
class MetricSpec:
    """The Recipe's evaluation settings: `make_metrics`' keyword arguments."""

    thresh: float = knob(0.5, "several labels per image: the probability above which a label counts as predicted",
                         range=Range(0.0, 1.0, True, True))


def make_metrics(thresh: float = 0.5, multi_label: bool = False) -> list[Callable[[Tensor, Tensor], Tensor]]:
    """The metrics of each epoch's table: accuracy, top-5, NLL and calibration; for several labels per
    image accuracy_multi and the macro F-score at `thresh`."""
    if not multi_label:
        return [accuracy, top5_accuracy, nll, calibration_error]
    return [_named("accuracy_multi", lambda p, t: accuracy_multi(p, t, thresh)),
            _named("f1_macro", lambda p, t: f1_macro(p, t, thresh))]


def _named(name: str, metric: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    metric.__name__ = name  # the Learner names a metric's column by its function's name
    return metric


METRICS = {
    "accuracy": accuracy,
    "error_rate": error_rate,
    "top5_accuracy": top_k_accuracy,
    "nll": nll,
    "ece": calibration_error,
}
