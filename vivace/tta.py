"""Test-time augmentation: softmax probabilities averaged over several views of each image.

Each view starts from the cached uint8 batch (`BatchLoader.iter_raw`), so a view may crop,
augment or resize it at any size up to the cache's presize; the model is fully convolutional
with adaptive pooling, so it also runs at a size larger than it was trained at.

`tta` follows fastai v2's `Learner.tta` (fastai/learner.py, checked in fastai/fastai at
5bc369c2): `aug_preds` = the activations (softmax) of `n` passes over the validation set with
the *training* transforms (`set_split_idx(0)`), reduced by `max(0)` if `use_max` else `mean(0)`;
`preds` = one plain validation pass. Then `use_max` returns `max(preds, aug_preds)` elementwise
(beta is ignored), `beta=None` returns `(aug_preds, preds)`, and otherwise it returns
`torch.lerp(aug_preds, preds, beta)` = `(1 - beta) * aug_preds + beta * preds`: beta is the
weight of the plain (centre) prediction, so the default 0.25 gives the augmented passes 75%.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import Pipeline
from .metrics import (MAX_LISTED_CLASSES, accuracy, accuracy_multi, calibration_error, f1_macro, lowest_f_scores, nll,
                      per_class_scores, probabilities, threshold_sweep)
from .pictures import Pictures
from .views import five_crop

Views = Callable[[Pictures], Iterable[Tensor]]  # a cached batch -> model inputs, one per view
TTAKind = Literal["none", "augment", "flip", "five-crop"]
TTA_KINDS: tuple[str, ...] = ("none", "augment", "flip", "five-crop")


def combine_tta(aug_probs: Tensor, plain_probs: Tensor, beta: float | None = 0.25,
                use_max: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """fastai's blend of augmented (n, N, C) and plain (N, C) probabilities (see the module doc)."""
    if aug_probs.ndim != 3 or aug_probs.shape[1:] != plain_probs.shape:
        raise ValueError(f"aug_probs must be (n, N, C) and plain_probs (N, C), got "
                         f"{tuple(aug_probs.shape)} and {tuple(plain_probs.shape)}")
    if beta is not None and not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must be in [0, 1] (the weight of the plain prediction) or None")
    if use_max:
        return torch.maximum(aug_probs.amax(0), plain_probs)
    aug = aug_probs.mean(0)
    if beta is None:
        return aug, plain_probs
    return torch.lerp(aug, plain_probs, beta)


@torch.no_grad()
def view_probs(learn, dl, views: Views) -> tuple[Tensor, Tensor]:
    """Probabilities (V, N, C) of every view of each batch of `dl` (softmax; sigmoids for several
    labels per image), and labels (N,) or multi-hot targets (N, C), on the CPU."""
    learn.model.eval()
    probs, targets = [], []
    for x, y in dl.iter_raw():  # uint8 Pictures on the loader's device
        with learn.autocast():
            batch = [probabilities(learn.model(v), learn.dls.multi_label) for v in views(x)]  # V x (B, C)
        probs.append(torch.stack(batch))
        targets.append(y)
    return torch.cat(probs, dim=1).cpu(), torch.cat(targets).cpu()  # the only host sync


def eval_size(learn, dl, size: int | None) -> int:
    """`size`, or the loader's own; at most the cache's presize (views crop, never upsample it)."""
    return learn.dls.eval_view.at(dl.size if size is None else size).size  # EvalView checks it


def plain_view(learn, size: int) -> Pipeline:
    """The validation transform at `size` (its centre crop too), then normalize."""
    return learn.dls.eval_view.at(size).transform()


def augment_view(learn, size: int, seed: int = 0) -> Pipeline:
    """The training augmentation at `size` with its own RNG, so training's draws are untouched."""
    aug = copy.copy(learn.dls.train.transform.resize)  # a TrainAugment: same crop/flip/warp/lighting
    aug.size = size
    aug.generator = torch.Generator().manual_seed(seed)
    return Pipeline(aug, learn.dls.eval_view.normalize)


def tta_views(learn, size: int, n: int = 4, seed: int = 0) -> Views:
    """n augmented views, then the plain one (made one at a time: one batch in memory)."""
    aug, plain = augment_view(learn, size, seed), plain_view(learn, size)

    def views(x: Pictures) -> Iterator[Tensor]:
        for _ in range(n):
            yield aug(x)
        yield plain(x)
    return views


def flip_views(learn, size: int) -> Views:
    """The plain view and its mirror image (normalize is per channel, so flipping after it is exact)."""
    plain = plain_view(learn, size)

    def views(x: Pictures) -> tuple[Tensor, Tensor]:
        v = plain(x)  # (B, 3, S, S)
        return v, v.flip(-1)
    return views


def five_crop_views(learn, size: int, crop_frac: float = 0.875) -> Views:
    """Centre, top-left, top-right, bottom-left, bottom-right crops, each resized to `size`."""
    norm = learn.dls.eval_view.normalize

    def views(x: Pictures) -> list[Tensor]:
        crops = five_crop(x, size, crop_frac)  # 5 x (B, 3, size, size) in [0, 1]
        return [norm(c) for c in crops] if norm is not None else crops
    return views


def _loader(learn, dl):
    return learn.dls.valid if dl is None else dl


def predict_probs(learn, dl=None, size: int | None = None) -> tuple[Tensor, Tensor]:
    """Plain softmax probabilities (N, C) at `size` (default: the loader's), and labels (N,)."""
    dl = _loader(learn, dl)
    plain = plain_view(learn, eval_size(learn, dl, size))
    probs, targets = view_probs(learn, dl, lambda x: [plain(x)])
    return probs[0], targets


def tta(learn, dl=None, n: int = 4, beta: float | None = 0.25, use_max: bool = False,
        size: int | None = None, seed: int = 0) -> tuple[Tensor | tuple[Tensor, Tensor], Tensor]:
    """fastai's TTA: n passes with the training augmentation blended with the plain pass by beta."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1 augmented passes")
    dl = _loader(learn, dl)
    probs, targets = view_probs(learn, dl, tta_views(learn, eval_size(learn, dl, size), n, seed))
    return combine_tta(probs[:n], probs[n], beta, use_max), targets


def flip_tta(learn, dl=None, size: int | None = None) -> tuple[Tensor, Tensor]:
    """Mean probabilities of each image and its horizontal flip, and labels."""
    dl = _loader(learn, dl)
    probs, targets = view_probs(learn, dl, flip_views(learn, eval_size(learn, dl, size)))
    return probs.mean(0), targets


def five_crop_tta(learn, dl=None, crop_frac: float = 0.875, size: int | None = None) -> tuple[Tensor, Tensor]:
    """Mean probabilities over the centre and four corner crops (side crop_frac of the image), and labels."""
    dl = _loader(learn, dl)
    probs, targets = view_probs(learn, dl, five_crop_views(learn, eval_size(learn, dl, size), crop_frac))
    return probs.mean(0), targets


def tta_probs(learn, kind: TTAKind, dl=None, size: int | None = None) -> tuple[Tensor, Tensor]:
    """Probabilities and labels for one kind of TTA: none, augment, flip or five-crop."""
    if kind == "none":
        return predict_probs(learn, dl, size)
    if kind == "augment":
        return tta(learn, dl, size=size)
    if kind == "flip":
        return flip_tta(learn, dl, size)
    if kind == "five-crop":
        return five_crop_tta(learn, dl, size=size)
    raise ValueError(f"tta={kind!r} is not one of: {', '.join(TTA_KINDS)}")


def prob_metrics(probs: Tensor, targets: Tensor, multi_label: bool = False,
                 thresh: float = 0.5) -> dict[str, float]:
    """Accuracy, NLL and expected calibration error of probabilities (N, C); for several labels per
    image accuracy_multi and the macro F-score at `thresh`, and the binary cross-entropy."""
    if multi_label:
        logits = torch.logit(probs, eps=1e-7)  # sigmoid(logit p) = p: the logit metrics accept it
        bce = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), targets.float())
        return {"accuracy_multi": float(accuracy_multi(logits, targets, thresh)),
                "f1_macro": float(f1_macro(logits, targets, thresh)), "bce": float(bce)}
    logp = probs.clamp_min(1e-12).log()  # softmax(log p) = p: the logit metrics accept it
    return {"accuracy": float(accuracy(logp, targets)), "nll": float(nll(logp, targets)),
            "ece": float(calibration_error(logp, targets))}


def evaluate(learn, kind: TTAKind, dl=None, size: int | None = None, thresh: float = 0.5) -> dict[str, float | str]:
    """One kind of TTA's metrics, time and validation images per second (`thresh`: several labels per image)."""
    dl = _loader(learn, dl)
    size = eval_size(learn, dl, size)
    start = time.perf_counter()
    probs, targets = tta_probs(learn, kind, dl, size)  # ends on the CPU: the clock sees finished work
    seconds = time.perf_counter() - start
    return {"tta": kind, "size": size, **prob_metrics(probs, targets, learn.dls.multi_label, thresh),
            "seconds": seconds, "images_per_s": len(targets) / seconds}


NOT_METRICS = ("tta", "size", "seconds", "images_per_s")


def format_evaluation(rows: list[dict[str, float | str]]) -> str:
    """Rows of `evaluate` as an aligned text table, a column per metric."""
    metrics = [k for k in rows[0] if k not in NOT_METRICS]
    widths = [max(9, len(m)) for m in metrics]
    lines = [f"{'tta':<10} {'size':>5} " + " ".join(f"{m:>{w}}" for m, w in zip(metrics, widths))
             + f" {'seconds':>8} {'images/s':>9}"]
    for r in rows:
        cells = " ".join(f"{r[m]:>{w}.4f}" for m, w in zip(metrics, widths))
        lines.append(f"{r['tta']:<10} {r['size']:>5} {cells} {r['seconds']:>8.2f} {r['images_per_s']:>9.1f}")
    return "\n".join(lines)


def format_thresholds(probs: Tensor, targets: Tensor, vocab: list[str], thresh: float) -> str:
    """Several labels per image: precision, recall and F-score per class at `thresh`, then
    accuracy_multi and the macro F-score at thresholds 0.1-0.9, as text."""
    logits = torch.logit(probs, eps=1e-7)
    scores = per_class_scores(logits, targets, thresh)
    shown = range(len(vocab))
    title = f"at threshold {thresh:g}:"
    if len(vocab) > MAX_LISTED_CLASSES:  # 1,000 lines bury the sweep below: the worst, the rest in the report
        shown = lowest_f_scores(scores)
        title = (f"at threshold {thresh:g}, the {len(shown)} lowest F-scores of {len(vocab):,} classes "
                 "(every class: the run's report.html):")
    width = max(len("class"), *(len(vocab[i]) for i in shown))
    lines = [title, f"{'class':<{width}} {'precision':>9} {'recall':>9} {'F-score':>9} {'images':>7}"]
    for i in shown:
        p, r, f, n = scores[i].tolist()
        lines.append(f"{vocab[i]:<{width}} {p:>9.4f} {r:>9.4f} {f:>9.4f} {int(n):>7}")
    lines += ["", f"{'threshold':>9} {'accuracy_multi':>14} {'macro F':>9}"]
    for t, acc, f1 in threshold_sweep(logits, targets):
        lines.append(f"{t:>9g} {acc:>14.4f} {f1:>9.4f}")
    return "\n".join(lines)
