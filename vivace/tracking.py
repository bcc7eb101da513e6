"""Trackers: the fit's numbers written where a dashboard reads them (TensorBoard).

`TensorBoardCallback(log_dir)` (`vivace train --tensorboard DIR`) writes, as TensorBoard scalars:

- `train/loss` and `train/lr` at every training step (the step's loss, the schedule's rate);
- `epoch/<name>` at every epoch, the row of the printed table: `train_loss`, `valid_loss`, each
  metric (`accuracy`, ...) and `time` (seconds); an epoch that skipped validation writes no
  validation figures.

Steps count training batches from the start of training (`epoch * batches_per_epoch + batch`), so
a resumed run continues its curves where they stopped; epochs are the table's numbers (from 0).
Under torchrun only rank 0 writes. Needs the tensorboard package (`pip install 'vivace[tensorboard]'`),
imported when a fit starts.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .callbacks import Callback, Loop
from .extras import require

FLUSH_EVERY = 32  # steps buffered on the device between writes: one host sync per 32 steps, not per step


def require_tensorboard(feature: str = "--tensorboard") -> None:
    """RuntimeError naming the extra when the tensorboard package is missing (a cheap look-up)."""
    require("tensorboard", feature, "tensorboard")


class TensorBoardCallback(Callback):
    """Write the loss and learning rate per step and each epoch's figures to TensorBoard in `log_dir`."""

    order = -10  # after the Recorder (-20): its row for the epoch is complete when this one reads it

    def __init__(self, log_dir: str | Path):
        require_tensorboard("TensorBoardCallback")
        self.log_dir = Path(log_dir)
        self.writer: Any = None  # a SummaryWriter, open from before_fit to after_fit on rank 0
        self.pending: list[tuple[int, Tensor, float]] = []  # (step, loss on the device, lr)
        self.first_step = 0  # where this fit's steps and epochs start: after an earlier fit's
        self.first_epoch = 0
        self.next_step = 0
        self.next_epoch = 0

    def before_fit(self, learn: Loop) -> None:
        if not learn.is_main:  # under torchrun only rank 0 writes
            return
        from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is an optional extra
        self.writer = SummaryWriter(str(self.log_dir))
        self.first_step, self.first_epoch = self.next_step, self.next_epoch

    def after_batch(self, learn: Loop) -> None:
        if self.writer is None:
            return
        state = learn.state
        step = self.first_step + state.epoch * state.n_batches + state.iter
        self.pending.append((step, state.loss, state.lr))
        self.next_step = step + 1
        if len(self.pending) >= FLUSH_EVERY:
            self._write_steps()

    def after_validate(self, learn: Loop) -> None:
        if self.writer is None:
            return
        self._write_steps()
        epoch = self.first_epoch + learn.state.epoch
        for name, value in learn.recorder.rows[-1].items():
            if name != "epoch" and math.isfinite(value):  # NaN: validation skipped this epoch
                self.writer.add_scalar(f"epoch/{name}", value, epoch)
        self.next_epoch = epoch + 1
        self.writer.flush()  # an epoch's figures are on disk even if the run is killed later

    def after_fit(self, learn: Loop) -> None:
        if self.writer is None:
            return
        self._write_steps()  # a fit stopped mid-epoch (early stop, failure) keeps its last steps
        self.writer.close()  # a later fit opens a new event file in the same folder
        self.writer = None

    def _write_steps(self) -> None:
        if not self.pending:
            return
        steps, losses, lrs = zip(*self.pending)
        # One device -> host copy for the buffered steps: reading each loss alone would sync per step.
        for step, loss, lr in zip(steps, torch.stack(losses).float().tolist(), lrs):
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        self.pending = []
