"""Learning-rate finder: exponentially growing LR over a few batches, loss recorded, then undone.

The suggestions are fastai's (fastai/callback/schedule.py), as pure functions of the sweep:
`valley` (the one to use), `steep` and `minimum`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .callbacks import Callback
from .progress import ProgressBar

SMOOTHING = 0.98  # fastai's: the exponential moving average of the loss that is recorded
DIVERGED = 4.0    # the sweep stops once the smoothed loss exceeds this many times its best
SKIP_END = 5      # fastai leaves the last points out of suggestions and plot: the loss explodes there


@dataclass
class LRFindResult:
    """An LR sweep: the rates tried, their smoothed losses and fastai's suggestions.

    `suggestion` is the rate to use (fastai's `valley`); `steep` and `minimum` are the other
    two rules, for comparison (NaN where a result was built without them).
    """

    lrs: list[float]
    losses: list[float]
    suggestion: float
    valley: float
    steep: float = math.nan
    minimum: float = math.nan

    def plot(self, path: Path | None = None):
        """Loss against learning rate (log scale), each suggestion marked on the curve."""
        from .figures import Figure
        fig = Figure(figsize=(6, 4), layout="constrained")  # constrained: the axis labels stay inside
        ax = fig.subplots()
        shown = len(self.lrs) - SKIP_END if len(self.lrs) > 2 * SKIP_END else len(self.lrs)
        ax.plot(self.lrs[:shown], self.losses[:shown])
        marks = [("valley", self.valley, "C1"), ("steep", self.steep, "C2"), ("minimum", self.minimum, "C3")]
        for name, lr, color in marks:
            if math.isfinite(lr):
                ax.plot(lr, self.losses[_nearest(self.lrs, lr)], "o", color=color, label=f"{name} {lr:.2e}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)")
        ax.legend()
        if path is not None:
            fig.savefig(path, dpi=80)
        return fig


def _nearest(lrs: Sequence[float], lr: float) -> int:
    """Index of the rate closest to `lr` on a log scale."""
    return min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - math.log(lr)))


# -- the suggestion rules: pure functions of (lrs, smoothed losses) -----------------------------
def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's `valley`: the rate about halfway down the longest run of falling loss."""
    n = len(losses)
    run = [1] * n  # run[i]: the longest falling sequence of losses that ends at point i
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            if run[end] < run[i]:
                end, start = i, i - run[i]  # fastai's arithmetic: one before the run's first point
    third = (end - start) / 3
    return float(lrs[max(start + int(third) + int(third / 2), 0)])  # start is -1 if the run begins at 0


def steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's `steep`: the rate where the loss falls fastest against log(LR)."""
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    return float(lrs[slopes.index(min(slopes))])


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's `minimum`: a tenth of the rate at the lowest loss."""
    losses = list(losses)
    return float(lrs[losses.index(min(losses))]) / 10


def suggestion_window(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> tuple[list[float], list[float]]:
    """The points fastai suggests from: without the first tenth and the last 5, cut at a NaN."""
    lrs, losses = list(lrs[num_it // 10:-SKIP_END]), list(losses[num_it // 10:-SKIP_END])
    finite = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    lrs, losses = lrs[:finite], losses[:finite]
    return (lrs, losses) if len(lrs) >= 2 else ([], [])


def suggest(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> LRFindResult:
    """The three suggestions for a sweep of `num_it` planned steps."""
    window = suggestion_window(lrs, losses, num_it)
    if not window[0]:  # too short once trimmed (an early divergence): use the finite points
        finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
        window = [lrs[i] for i in finite], [losses[i] for i in finite]
    if len(window[0]) < 2:
        raise ValueError(f"the LR sweep recorded {len(window[0])} finite loss(es): too few to suggest a rate; "
                         f"lower the start LR or raise num_it")
    best = valley(*window)
    return LRFindResult(list(lrs), list(losses), best, best, steep(*window), minimum(*window))


# -- the sweep -----------------------------------------------------------------------------
class LRRecorder(Callback):
    """Records the smoothed loss per batch; stops at `num_it` or when the loss diverges."""

    def __init__(self, num_it: int, beta: float = SMOOTHING):
        self.num_it, self.beta = num_it, beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.avg, self.best = 0.0, math.inf

    def after_batch(self, learn) -> None:
        # One host sync per batch: the sweep needs each loss to decide when to stop (fastai too).
        self.avg = self.beta * self.avg + (1 - self.beta) * learn.state.loss.item()
        smooth = self.avg / (1 - self.beta ** (len(self.losses) + 1))  # debiased, as fastai's Recorder
        self.lrs.append(learn.state.lr)
        self.losses.append(smooth)
        self.best = min(self.best, smooth)
        if len(self.losses) >= self.num_it or smooth > DIVERGED * self.best or not math.isfinite(smooth):
            learn.request_stop()


# Learner attributes a fit rebinds: the sweep gives each one back.
_LOOP_STATE = ("cbs", "opt", "state", "resume", "size_schedule", "ema")


def sweep_callbacks(cbs: Sequence[Callback]) -> list[Callback]:
    """The callbacks a sweep keeps: those that change batches (Mixup, CutMix).

    Left out: the progress bar (the sweep shows its own), the Recorder's table, checkpoints,
    logs, EMA and the NaN guard (a sweep is meant to end in divergence).
    """
    return [cb for cb in cbs if type(cb).transform_batch is not Callback.transform_batch]


def sweep_bars(cbs: Sequence[Callback], num_it: int) -> list[ProgressBar]:
    """One bar over the sweep's `num_it` batches, shown where the Learner's bar shows (if it has one)."""
    return [cb.for_sweep(num_it) for cb in cbs if isinstance(cb, ProgressBar)][:1]


def lr_find(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100) -> LRFindResult:
    """Sweep the LR from start_lr to end_lr over num_it batches; the learner is left as it was."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"start_lr={start_lr:g}, end_lr={end_lr:g}: need 0 < start_lr < end_lr")
    if num_it < 2:
        raise ValueError(f"num_it={num_it}: the sweep needs at least 2 batches")
    saved = {name: getattr(learn, name) for name in _LOOP_STATE}
    model_state = copy.deepcopy(learn.model.state_dict())
    kept = sweep_callbacks(learn.cbs)
    kept_states = [copy.deepcopy(cb.state_dict()) for cb in kept]  # e.g. Mixup's random stream
    recorder = LRRecorder(num_it)
    try:
        learn.cbs = [*kept, *sweep_bars(saved["cbs"], num_it), recorder]
        learn.opt, learn.resume = None, None  # a fresh optimizer, from the first batch
        n_batches = max(len(learn.dls.train), 1)
        n_epochs = math.ceil(num_it / n_batches)
        steps, ratio = n_epochs * n_batches, end_lr / start_lr
        # Progress p covers n_epochs; batch i gets start_lr * ratio ** (i / num_it), as fastai's.
        learn._fit(n_epochs, lambda p: start_lr * ratio ** min(p * steps / num_it, 1.0), None, validate=False)
    finally:
        learn.model.load_state_dict(model_state)
        for cb, state in zip(kept, kept_states):
            cb.load_state_dict(state)
        for name, value in saved.items():
            setattr(learn, name, value)
    return suggest(recorder.lrs, recorder.losses, num_it)
