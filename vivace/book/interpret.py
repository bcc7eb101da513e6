"""fastai's `ClassificationInterpretation`, answered by `vivace.interpret.Interpretation`.

The numbers and the figures are Interpretation's; this class only gives them fastai's names and
return types (numpy confusion matrix, figures returned rather than saved: a notebook shows them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from vivace.figures import Figure
from vivace.interpret import Interpretation


class ClassificationInterpretation:
    """Where a trained classifier goes wrong: `ClassificationInterpretation.from_learner(learn)`.

    `interp` is the underlying `vivace.interpret.Interpretation` (per-class accuracy, reliability).
    """

    def __init__(self, interp: Interpretation):
        self.interp = interp

    @classmethod
    def from_learner(cls, learn: Any, ds_idx: int = 1, dl: Any = None) -> ClassificationInterpretation:
        """Run `learn` over `dl` (default: the validation set, ds_idx=1; the training set, ds_idx=0)."""
        if dl is None:
            if ds_idx not in (0, 1):
                raise ValueError(f"from_learner(ds_idx={ds_idx}): 0 is the training set, 1 the validation set")
            dl = learn.dls.valid if ds_idx == 1 else learn.dls.train
        return cls(Interpretation.from_learner(learn, dl))

    @property
    def vocab(self) -> list[str]:
        return self.interp.vocab

    def confusion_matrix(self) -> np.ndarray:
        """(C, C) int64 counts: row = actual class, column = predicted class."""
        return self.interp.confusion_matrix().numpy()

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """(actual, predicted, count) for each off-diagonal cell with count >= min_val, largest first."""
        return self.interp.most_confused(min_val, by_name=False)  # vocab ids, as fastai's

    def top_losses(self, k: int | None = None) -> tuple[Tensor, Tensor]:
        """The k largest per-item cross-entropy losses and their item indices (all when k is None)."""
        return self.interp.top_losses(k)

    def plot_confusion_matrix(self, normalize: bool = False, path: str | Path | None = None) -> Figure:
        """The confusion matrix as a Figure (row-normalized if asked), saved as PNG to `path` if given."""
        return _finish(self.interp.confusion_matrix_figure(normalize), path)

    def plot_top_losses(self, k: int, ncols: int = 3, path: str | Path | None = None) -> Figure:
        """The k worst-predicted images titled prediction/actual/loss/probability, as a Figure."""
        return _finish(self.interp.top_losses_figure(k, ncols), path)


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(Path(path), format="png")
    return fig
