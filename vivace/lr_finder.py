"""Learning-rate finder: exponentially growing LR over a few batches, loss recorded, then undone."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

from .callbacks import Callback, NaNGuard


@dataclass
class LRFindResult:
    """Learning rates tried, their smoothed losses, and the suggested rate."""

    lrs: list[float]
    losses: list[float]
    suggestion: float

    def plot(self, path: Path | None = None):
        """Loss against learning rate (log scale), the suggestion marked."""
        from matplotlib.figure import Figure
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.plot(self.lrs, self.losses)
        ax.axvline(self.suggestion, color="red", linestyle="--", label=f"suggested {self.suggestion:.2e}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)")
        ax.legend()
        if path is not None:
            fig.savefig(path, dpi=80)
        return fig


class LRRecorder(Callback):
    """Records the smoothed loss per batch; stops at `num_it` or when the loss diverges."""

    def __init__(self, num_it: int, beta: float = 0.98):
        self.num_it, self.beta = num_it, beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.avg, self.best = 0.0, math.inf

    def after_batch(self, learn) -> None:
        # Bias-corrected exponential moving average, as fastai's Recorder smooths losses.
        self.avg = self.beta * self.avg + (1 - self.beta) * learn.loss.item()
        smooth = self.avg / (1 - self.beta ** (len(self.losses) + 1))
        self.lrs.append(learn.lr)
        self.losses.append(smooth)
        self.best = min(self.best, smooth)
        if len(self.losses) >= self.num_it or smooth > 4 * self.best or not math.isfinite(smooth):
            learn.request_stop()


def steepest_point(lrs: list[float], losses: list[float]) -> float:
    """The LR where the loss falls fastest against log(LR), ignoring the noisy ends."""
    lo, hi = len(lrs) // 10, max(len(lrs) * 9 // 10, len(lrs) // 10 + 2)
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
              for i in range(lo, min(hi, len(lrs) - 1))]
    if not slopes:
        return lrs[len(lrs) // 2]
    return lrs[lo + slopes.index(min(slopes))]


def lr_find(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100) -> LRFindResult:
    """Sweep the LR from start_lr to end_lr; the learner's weights and optimizer are restored after."""
    model_state = copy.deepcopy(learn.model.state_dict())
    opt_before = learn.opt
    learn.opt = None  # a fresh optimizer for the sweep, so its momentum does not leak into training
    history = {k: list(v) for k, v in learn.recorder.state_dict().items()}
    print_table, learn.recorder.print_table = learn.recorder.print_table, False
    recorder = LRRecorder(num_it)
    # The sweep is meant to end diverging: LRRecorder stops it there, the guard sits it out.
    cbs_before = learn.cbs
    learn.cbs = [cb for cb in cbs_before if not isinstance(cb, NaNGuard)] + [recorder]
    n_epochs = math.ceil(num_it / max(len(learn.dls.train), 1))
    ratio = end_lr / start_lr
    # progress p covers n_epochs; the sweep reaches end_lr after num_it batches.
    steps = n_epochs * len(learn.dls.train)
    learn._fit(n_epochs, lambda p: start_lr * ratio ** min(p * steps / num_it, 1.0), None, validate=False)
    learn.cbs = cbs_before
    learn.model.load_state_dict(model_state)
    learn.opt = opt_before
    learn.recorder.load_state_dict(history)
    learn.recorder.print_table = print_table
    return LRFindResult(recorder.lrs, recorder.losses, steepest_point(recorder.lrs, recorder.losses))
