"""Guards: callbacks that stop a fit, because it diverged (`NaNGuard`), stopped improving
(`EarlyStopping`) or reached a batch count (`StopAfter`)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import distributed
from .callbacks import Callback, Loop


CHECK_EVERY = 32  # batches between the guard's looks at the loss: each look is a CPU-GPU sync point
EXPLODE_FACTOR = 10.0  # a healthy run's loss (label smoothing and Mixup included) stays far below this


class NaNGuard(Callback):
    """Stops the fit when training diverges, naming where and suggesting a fix.

    Diverged means: a non-finite training loss; a training loss that exploded, i.e. its mean over
    the batches since the last look exceeds EXPLODE_FACTOR x the larger of the first batch's loss
    and ln(n_classes) (a uniform guess's loss); or a non-finite validation loss. The training loss
    is summed on the device and looked at every `check_every` batches and at the end of each epoch,
    so a problem at batch k is caught by batch k + check_every - 1 without a sync per batch.
    """

    order = -10

    def __init__(self, check_every: int = CHECK_EVERY, explode_factor: float = EXPLODE_FACTOR):
        self.check_every, self.explode_factor = check_every, explode_factor
        self.first_loss: Tensor | float | None = None  # a device tensor until the first look
        self.window_sum, self.window_start, self.window_len = torch.zeros(()), 0, 0

    def before_epoch(self, learn: Loop) -> None:
        self._open_window(learn.device, learn.state.start.batch)

    def after_batch(self, learn: Loop) -> None:
        if self.first_loss is None:
            self.first_loss = learn.state.loss.float()
        self.window_sum += learn.state.loss.float()  # on the device: no sync
        self.window_len += 1
        if self.window_len >= self.check_every or learn.state.iter + 1 == learn.state.n_batches:
            self._look(learn)

    def after_validate(self, learn: Loop) -> None:
        loss = learn.state.last_metrics["valid_loss"]
        if learn.state.validated and not math.isfinite(loss):
            learn.fail(f"the validation loss is {loss} after epoch {learn.state.epoch}: the model's outputs "
                       f"are not finite; {_advice(learn)}")

    def after_fit(self, learn: Loop) -> None:
        if self.window_len and not learn.state.failure:  # a fit stopped early, mid-window
            self._look(learn)

    def window_is_finite(self) -> bool:
        """Whether every training loss since the last look is finite (a sync: for savers only)."""
        return bool(torch.isfinite(self.window_sum))

    def _look(self, learn: Loop) -> None:
        mean, where = self._window_mean(), f"epoch {learn.state.epoch}, batches {self.window_start}-{learn.state.iter}"
        if not math.isfinite(mean):
            learn.fail(f"the training loss became {mean} in {where}; {_advice(learn)}")
        elif mean > self.explode_factor * self._start_loss(learn.n_classes):
            learn.fail(f"the training loss exploded to {mean:.3g} in {where}, over {self.explode_factor:g}x "
                       f"its start ({self._start_loss(learn.n_classes):.3g}); {_advice(learn)}")
        self._open_window(learn.device, learn.state.iter + 1)

    def _window_mean(self) -> float:
        # The sync point. Under torchrun every rank looks at the same batch and gets the same numbers.
        sums = [self.window_sum] + ([self.first_loss] if isinstance(self.first_loss, Tensor) else [])
        values = distributed.mean_all(torch.stack(sums)).tolist()
        if isinstance(self.first_loss, Tensor):
            self.first_loss = values[1]
        return values[0] / self.window_len

    def _start_loss(self, n_classes: int) -> float:
        """The loss training starts from: the first batch's, and at least a uniform guess's."""
        uniform = math.log(max(n_classes, 2))
        return max(self.first_loss, uniform) if math.isfinite(self.first_loss) else uniform

    def _open_window(self, device: torch.device, first_batch: int) -> None:
        self.window_sum, self.window_start, self.window_len = torch.zeros((), device=device), first_batch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"first_loss": None if self.first_loss is None else float(self.first_loss)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_loss = state.get("first_loss")


def _advice(learn: Loop) -> str:
    """What to try next, from the learning-rate schedule the fit ran."""
    peak = max(learn.state.lr_schedule(i / 100) for i in range(101))
    if not math.isfinite(peak):
        return f"the learning rate is {peak}: give a finite, positive one (--lr)"
    amp = ", or turn mixed precision off (--amp off)" if learn.amp_dtype is not None else ""
    if peak <= 0:  # the weights never moved: the inputs, the model or the loss make the NaN
        return f"the learning rate is {peak:g}, so check the inputs, the model and the loss{amp}"
    return f"lower the learning rate (it peaks at {peak:.3g}: try --lr {peak / 10:.3g}){amp}"


class EarlyStopping(Callback):
    """Stops when `monitor` has not improved for `patience` epochs."""

    def __init__(self, monitor: str = "valid_loss", patience: int = 3, min_delta: float = 0.0):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = -1.0 if "loss" in monitor or "error" in monitor else 1.0
        self.best, self.wait = None, 0

    def after_epoch(self, learn: Loop) -> None:
        if math.isnan(learn.state.last_metrics[self.monitor]):  # this epoch skipped validation
            return
        value = self.sign * learn.state.last_metrics[self.monitor]
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            learn.log(f"early stop: {self.monitor} did not improve for {self.patience} epochs")
            learn.request_stop()


class StopAfter(Callback):
    """Stops after a fixed number of training batches (for probes and tests)."""

    def __init__(self, n_batches: int):
        self.n_batches, self.seen = n_batches, 0

    def after_batch(self, learn: Loop) -> None:
        self.seen += 1
        if self.seen >= self.n_batches:
            learn.request_stop()
