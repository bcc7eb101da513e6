"""Events: callbacks observe the loop through a few named events and may ask it to stop.

Events, in order: before_fit, then per epoch before_epoch, per batch (before_batch, the
training step, after_batch), after_validate, after_epoch; finally after_fit. The step
(`Learner._train_step`) calls `transform_batch`, the single hook that may change data (Mixup,
CutMix), between augmentation and the forward pass. Techniques that change the step itself
configure it in before_fit instead of acting per batch (`vivace.techniques`).

Callbacks see the loop as a `Loop`: what they may read and ask of a `Learner`, named here so
this module needs nothing from `vivace.learner` (which imports it). The rooms: this one (the
event base and the Recorder), `progress` (the bar), `guards` (NaN guard, early stop),
`techniques` (Mixup/CutMix, EMA, progressive resizing), `checkpoint`, `records`.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from . import screen
from .epoch_table import fit_layout, html_table


class Loop(Protocol):
    """What a callback reads from the Learner and may ask of it (`vivace.learner.Learner` is one)."""

    dls: Any  # a vivace.data.DataLoaders
    model: nn.Module
    device: torch.device
    state: Any  # a vivace.learner.FitState: where the fit is
    is_main: bool  # rank 0 (or the only process)
    amp_dtype: torch.dtype | None
    size_schedule: Any  # progress -> crop side, set by ProgressiveResize
    ema: Any  # a WeightAverage, set by EMA
    eval_model: nn.Module
    recorder: Recorder  # the table's rows so far, and each step's lr and size

    @property
    def n_classes(self) -> int: ...
    @property
    def metric_names(self) -> list[str]: ...
    def request_stop(self) -> None: ...
    def fail(self, message: str) -> None: ...
    def log(self, message: str) -> None: ...


class Callback:
    """Base class: every event is a no-op; `order` sorts callbacks (lower runs first)."""

    order: int = 0

    def before_fit(self, learn: Loop) -> None: ...
    def before_epoch(self, learn: Loop) -> None: ...
    def before_batch(self, learn: Loop) -> None: ...
    def after_batch(self, learn: Loop) -> None: ...
    def after_validate(self, learn: Loop) -> None: ...
    def after_epoch(self, learn: Loop) -> None: ...
    def after_fit(self, learn: Loop) -> None: ...

    def transform_batch(self, learn: Loop, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Return the (possibly changed) training batch; the default leaves it alone."""
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint so a resumed run continues exactly (RNG states, counters)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Recorder(Callback):
    """Collects per-epoch rows (train loss, valid loss, metrics, time) and shows the book's table.

    Printed as text, fitted to the terminal's width (`vivace.epoch_table`); in a notebook kernel
    an HTML table instead, updated in place, one row per epoch of the running fit.
    """

    order = -20

    def __init__(self, print_table: bool = True):
        self.print_table = print_table
        self.rows: list[dict[str, float]] = []
        self.lrs: list[float] = []
        self.sizes: list[int] = []

    def before_fit(self, learn: Loop) -> None:
        self.names = ["epoch", "train_loss", "valid_loss", *learn.metric_names, "time"]
        self.layout = fit_layout(self.names, screen.terminal_columns(sys.stdout))  # learn.log prints to stdout
        in_kernel = self.print_table and learn.is_main and screen.in_notebook_kernel()
        self.html = screen.LiveOutput() if in_kernel else None
        if self.print_table and self.html is None and not self.rows:
            learn.log(self.layout.header_line())

    def before_epoch(self, learn: Loop) -> None:
        self.start = time.perf_counter()
        # Summed on the device: no host sync per batch. Restored when resuming mid-epoch.
        self.loss_sum = learn.state.start.loss_sum.to(learn.device)
        self.n_seen = learn.state.start.batches

    def after_batch(self, learn: Loop) -> None:
        self.loss_sum = self.loss_sum + learn.state.loss.float()
        self.n_seen += 1
        self.lrs.append(learn.state.lr)
        self.sizes.append(learn.state.size)

    def after_validate(self, learn: Loop) -> None:
        row = {"epoch": float(learn.state.epoch), "train_loss": (self.loss_sum / max(self.n_seen, 1)).item()}
        row.update(learn.state.last_metrics)
        row["time"] = time.perf_counter() - self.start
        self.rows.append(row)
        if self.html is not None:
            self._show_html(learn)
        elif self.print_table:
            learn.log(self.layout.row_line(row))

    def _show_html(self, learn: Loop) -> None:
        """The running fit's rows as one HTML table, replaced in place; as text if the display fails."""
        rows = self.rows[max((i for i, r in enumerate(self.rows) if r["epoch"] == 0), default=0):]
        text = "\n".join([self.layout.header_line(), *map(self.layout.row_line, rows)])
        try:
            self.html.show(html_table(self.names, rows), text)
        except Exception as err:  # display only: a broken notebook front must not stop training
            self.html = None
            learn.log(f"epoch table: HTML display failed ({type(err).__name__}: {err}); printed from here on")
            learn.log(text)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "lrs": self.lrs, "sizes": self.sizes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self.lrs, self.sizes = state["rows"], state["lrs"], state["sizes"]
