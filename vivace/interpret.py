"""Interpretation: where a trained classifier goes wrong (the book's ClassificationInterpretation).

Plots are `vivace.figures.Figure`s (no pyplot state, no GUI backend; shown inline when a notebook
cell returns one) and save PNGs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .data.names import display_names
from .figures import Figure
from .metrics import calibration_error, reliability_bins

MAX_ANNOTATED_CLASSES = 30  # above this, confusion-matrix cells are too small for their counts
# Above this a name per row and column would need a figure over 50 inches wide (4,000 px at 80 dpi;
# ImageNet's 1,000: 40,000 px): the matrix is drawn at a fixed size, its axes by class index.
MAX_NAMED_CLASSES = 100
MANY_CLASSES_SIDE_IN = 12.0  # the figure's side above MAX_NAMED_CLASSES: about a pixel per class at 1,000


class Interpretation:
    """Logits and labels over a loader, with the confusion matrix, top losses and plots."""

    def __init__(self, learn: Any, logits: Tensor, targets: Tensor, dl: Any = None):
        self.learn, self.dl = learn, dl if dl is not None else learn.dls.valid
        self.logits, self.targets = logits.float(), targets.long()
        self.vocab = [str(v) for v in learn.dls.vocab]
        self.names = display_names(self.vocab)  # what plots and tables show (n01440764 -> tench)
        self.probs = F.softmax(self.logits, dim=-1)  # (N, C)
        self.preds = self.probs.argmax(dim=-1)  # (N,)
        # Per-item cross-entropy, whatever loss trained the model: comparable across runs.
        self.losses = F.cross_entropy(self.logits, self.targets, reduction="none")  # (N,)

    @classmethod
    def from_learner(cls, learn: Any, dl: Any = None) -> Interpretation:
        """Run `learn` over `dl` (default: the validation loader, unshuffled)."""
        logits, targets = learn.get_preds(dl)
        return cls(learn, logits, targets, dl)

    def confusion_matrix(self) -> Tensor:
        """(C, C) int64 counts: row = actual class, column = predicted class."""
        c = len(self.vocab)
        return torch.bincount(self.targets * c + self.preds, minlength=c * c).view(c, c)

    def most_confused(self, min_val: int = 1, by_name: bool = True) -> list[tuple[str, str, int]]:
        """(actual, predicted, count) for off-diagonal cells with count >= min_val, largest first.

        Classes by human name for people (`by_name`), or by vocab id for code (as fastai returns).
        """
        labels = self.names if by_name else self.vocab
        return [(labels[a], labels[p], n) for a, p, n in confused_pairs(self.confusion_matrix(), min_val)]

    def per_class_accuracy(self) -> dict[str, float]:
        """Recall per class (correct / actual count); NaN for a class absent from the data."""
        cm = self.confusion_matrix().double()
        acc = cm.diagonal() / cm.sum(dim=1)  # 0/0 = NaN: no examples of that class
        return dict(zip(self.vocab, acc.tolist()))

    def top_losses(self, k: int | None = None) -> tuple[Tensor, Tensor]:
        """The k largest per-item losses and their indices into the loader (all when k is None)."""
        k = len(self.losses) if k is None else min(k, len(self.losses))
        return self.losses.topk(k)

    def images(self, indices: Tensor) -> Tensor:
        """The loader's inputs at `indices`, denormalized to [0, 1]: float (k, 3, S, S) on the CPU."""
        wanted = {int(i): n for n, i in enumerate(indices.tolist())}
        out: list[Tensor | None] = [None] * len(wanted)
        seen = 0
        for x, _ in self.dl:  # unshuffled, so position n in the loader is item n of the preds
            for i in range(seen, seen + len(x)):
                if i in wanted:
                    out[wanted[i]] = x[i - seen].float().cpu()
            seen += len(x)
            if seen > max(wanted, default=-1):
                break  # the rest of the loader holds none of them
        x = torch.stack(out)  # (k, 3, S, S)
        norm = self.learn.dls.normalize
        return (norm.decode(x) if norm is not None else x).clamp(0, 1)

    def plot_confusion_matrix(self, path: str | Path, normalize: bool = False) -> Path:
        """Save the confusion matrix (rows actual, columns predicted) as a PNG."""
        return _save(self.confusion_matrix_figure(normalize), path)

    def confusion_matrix_figure(self, normalize: bool = False) -> Figure:
        """The confusion matrix (rows actual, columns predicted) as a Figure, classes labelled by name."""
        cm = self.confusion_matrix().double()
        if normalize:
            cm = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
        c = len(self.vocab)
        named = c <= MAX_NAMED_CLASSES
        side = max(4.0, 0.5 * c + 2) if named else MANY_CLASSES_SIDE_IN
        fig = Figure(figsize=(side, side))
        ax = fig.add_subplot()
        ax.imshow(cm.numpy(), cmap="Blues")
        title = "Confusion matrix" + (" (row-normalized)" if normalize else "")
        if named:
            ax.set(xticks=range(c), yticks=range(c), xlabel="predicted", ylabel="actual", title=title)
            ax.set_xticklabels(self.names, rotation=90)
            ax.set_yticklabels(self.names)
        else:  # matplotlib's own index ticks: interp.vocab[i] names class i, most_confused() the worst cells
            ax.set(xlabel="predicted (class index)", ylabel="actual (class index)",
                   title=f"{title}, {c} classes by index in the vocab")
        if c <= MAX_ANNOTATED_CLASSES:
            top = float(cm.max()) if cm.numel() else 0.0
            for a in range(c):
                for p in range(c):
                    value = cm[a, p].item()
                    ax.text(p, a, f"{value:.2f}" if normalize else f"{int(value)}", ha="center", va="center",
                            color="white" if value > top / 2 else "black", fontsize=8)
        return fig

    def plot_top_losses(self, k: int, path: str | Path, ncols: int = 3) -> Path:
        """Save the k worst-predicted images, titled predicted/actual/loss/probability of actual."""
        return _save(self.top_losses_figure(k, ncols), path)

    def top_losses_figure(self, k: int, ncols: int = 3) -> Figure:
        """The k worst-predicted images, titled predicted/actual/loss/probability of actual."""
        if k < 1:
            raise ValueError(f"k={k} must be >= 1 (the number of images to plot)")
        losses, indices = self.top_losses(k)
        imgs = self.images(indices)
        nrows = max(1, -(-len(indices) // ncols))
        fig = Figure(figsize=(3 * ncols, 3.3 * nrows))
        for n, (loss, i) in enumerate(zip(losses.tolist(), indices.tolist())):
            ax = fig.add_subplot(nrows, ncols, n + 1)
            ax.imshow(imgs[n].permute(1, 2, 0).numpy())
            actual, pred = int(self.targets[i]), int(self.preds[i])
            ax.set_title(f"{self.names[pred]}/{self.names[actual]}\n{loss:.2f} / {self.probs[i, actual]:.2f}",
                         fontsize=9)
            ax.axis("off")
        fig.suptitle("Prediction/Actual / Loss/Probability", fontsize=10)
        return fig

    def plot_reliability(self, path: str | Path, n_bins: int = 15) -> Path:
        """Save a reliability diagram (accuracy vs confidence per bin) with the ECE in the title."""
        conf, acc, count = reliability_bins(self.logits, self.targets, n_bins)
        ece = float(calibration_error(self.logits, self.targets, n_bins))
        used = count > 0
        centres = (torch.arange(n_bins, dtype=torch.float64) + 0.5) / n_bins
        fig = Figure(figsize=(5, 5))
        ax = fig.add_subplot()
        ax.bar(centres[used].numpy(), acc[used].numpy(), width=1 / n_bins, edgecolor="black",
               color="tab:blue", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.plot(conf[used].numpy(), acc[used].numpy(), "o", color="tab:red", label="bin: (mean confidence, accuracy)")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"Reliability (ECE {ece:.3f}, {int(count.sum())} items)")
        ax.legend(loc="upper left")
        return _save(fig, path)


def confused_pairs(cm: Tensor, min_val: int = 1) -> list[tuple[int, int, int]]:
    """(actual, predicted, count) of each off-diagonal cell of `cm` with count >= min_val, largest
    first, ties in row order (as fastai sorts them). Torch ops over the whole matrix: at 1,000
    classes a loop over its million cells took seconds."""
    c = cm.shape[0]
    off_diagonal = ~torch.eye(c, dtype=torch.bool)
    cells = ((cm >= min_val) & off_diagonal).flatten().nonzero().squeeze(1)  # row-major flat indices
    counts, order = cm.flatten()[cells].sort(descending=True, stable=True)
    cells = cells[order]
    return list(zip((cells // c).tolist(), (cells % c).tolist(), counts.tolist()))


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path
