"""The progress bars, and where they show: a terminal (text), a Jupyter kernel (HTML replaced in
place), or nowhere (a pipe, CI)."""
from __future__ import annotations

import html
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, TextIO

from tqdm import tqdm

from . import screen
from .budget import format_duration
from .callbacks import Callback, Loop
from .environment import env_choice

PROGRESS_MODES = ("on", "off", "auto")
ProgressFront = Literal["notebook", "text", "none"]
SWEEP_LABEL = "lr_find"  # a sweep's one bar (`vivace.lr_finder`)


def progress_mode(enabled: bool | None = None) -> str:
    """'on', 'off' or 'auto': from `enabled` when given, else from VIVACE_PROGRESS (default auto)."""
    if enabled is not None:
        return "on" if enabled else "off"
    return env_choice("VIVACE_PROGRESS", PROGRESS_MODES, "auto")


def choose_front(mode: str, stream_is_tty: bool, in_kernel: bool) -> ProgressFront:
    """Which bars to show: HTML in a kernel, text in a terminal (or when forced on), or none."""
    if mode == "off":
        return "none"
    if in_kernel:
        return "notebook"
    return "text" if mode == "on" or stream_is_tty else "none"


def epoch_label(state: Any) -> str:
    """`epoch 3/5`; under a budget `epoch 3/~5, 4:12 left`, the epochs estimated from the time spent."""
    if state.clock is None:
        return f"epoch {state.epoch + 1}/{state.n_epochs}"
    estimate = f"/~{state.n_epochs}" if state.n_epochs else ""
    return f"epoch {state.epoch + 1}{estimate}, {format_duration(state.clock.end - time.perf_counter())} left"


class TextBars:
    """tqdm bars on a stream: one per epoch (or one over a sweep's steps), erased when done."""

    text_format = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} batches [{elapsed}<{remaining}{postfix}]"

    def __init__(self, stream: TextIO, sweep_steps: int | None):
        self.stream, self.sweep_steps, self.bar = stream, sweep_steps, None

    def start_epoch(self, state: Any) -> None:
        if self.sweep_steps is None:
            self.close()
            self._open(epoch_label(state), state.n_batches, state.start.batch)
        elif self.bar is None:  # a sweep's one bar, over all its epochs
            self._open(SWEEP_LABEL, self.sweep_steps, 0)

    def _open(self, desc: str, total: int, initial: int) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, file=self.stream,
                        bar_format=self.text_format)

    def advance(self, postfix: str | None) -> None:
        self.bar.update(1)
        if postfix is not None:
            self.bar.set_postfix_str(postfix)

    def end_epoch(self, state: Any) -> None:
        if self.sweep_steps is None:
            self.close()  # before validation, so the epoch's table row prints on a clean line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    end_fit = close

    def abandon(self) -> None:
        if self.bar is not None:
            self.bar.disable = True  # its close() and __del__ then draw nothing more
            self.bar = None


@dataclass
class Count:
    """A bar's numbers: `done` of `total`, counting from `first`, since `started` (perf_counter s)."""

    total: int
    done: int = 0
    first: int = 0
    started: float = field(default_factory=time.perf_counter)

    def timing(self) -> str:
        """[elapsed<remaining], as tqdm writes it."""
        elapsed = time.perf_counter() - self.started
        rate = (self.done - self.first) / max(elapsed, 1e-9)
        remaining = tqdm.format_interval((self.total - self.done) / rate) if rate > 0 else "?"
        return f"[{tqdm.format_interval(elapsed)}<{remaining}]"


def bar_html(count: Count, label: str) -> str:
    return (f'<div><progress value="{count.done}" max="{max(count.total, 1)}" '
            f'style="width:300px; height:12px; vertical-align:middle"></progress> {html.escape(label)}</div>')


class NotebookBars:
    """HTML bars in one output of the cell, replaced in place: the fit's epochs above this epoch's
    batches (a sweep: one bar over its steps). The saved notebook keeps their last state."""

    refresh_s = 0.2  # between redraws: each sends the whole output to the frontend

    def __init__(self, sweep_steps: int | None):
        self.output, self.sweep_steps = screen.LiveOutput(), sweep_steps
        self.epochs: Count | None = None  # the fit's bar (none in a sweep)
        self.batches: Count | None = None  # this epoch's bar, or the sweep's
        self.desc, self.postfix, self.drawn = "", "", 0.0

    def start_epoch(self, state: Any) -> None:
        if self.sweep_steps is not None:
            if self.batches is None:
                self.desc, self.batches = SWEEP_LABEL, Count(self.sweep_steps)
        else:
            if self.epochs is None:
                self.epochs = Count(state.n_epochs, state.epoch, state.epoch)
            self.epochs.done = state.epoch
            self.desc, self.postfix = epoch_label(state), ""
            self.batches = Count(state.n_batches, state.start.batch, state.start.batch)
        self._draw()

    def advance(self, postfix: str | None) -> None:
        self.batches.done += 1
        self.postfix = f", {postfix}" if postfix is not None else self.postfix
        if time.perf_counter() - self.drawn >= self.refresh_s:
            self._draw()

    def end_epoch(self, state: Any) -> None:
        if self.sweep_steps is None and self.batches is not None:
            self.epochs.done, self.batches = state.epoch + 1, None  # the epoch bar goes: the table shows the row
            self._draw()

    def end_fit(self) -> None:
        if self.drawn:  # the last state stays in the notebook: the epochs done, a stopped epoch's bar
            self._draw()

    def abandon(self) -> None:
        self.batches = self.epochs = None

    def _draw(self) -> None:
        parts = []
        if self.epochs is not None:
            parts.append((self.epochs, f"{self.epochs.done}/{self.epochs.total} epochs {self.epochs.timing()}"))
        if self.batches is not None:
            parts.append((self.batches, f"{self.desc}: {self.batches.done}/{self.batches.total} batches"
                                        f"{self.postfix} {self.batches.timing()}"))
        self.output.show("".join(bar_html(count, label) for count, label in parts),
                         "\n".join(label for _, label in parts))
        self.drawn = time.perf_counter()


class ProgressBar(Callback):
    """Live bars: in a terminal one per epoch (epoch i/N, batches done, loss, images/s, the epoch's
    ETA); in a notebook one over the fit's epochs and one over this epoch's batches, as fastai's.

    Where they show is `enabled` (True: always, False: never), else the VIVACE_PROGRESS
    environment variable: `on`, `off` or `auto` (the default). Auto shows bars in a terminal
    (stderr a tty) and in a Jupyter kernel (HTML replaced in place: `NotebookBars`), and none in
    a pipe or CI, where the Recorder's one line per epoch is the progress. `file` sends text bars
    to that stream instead of stderr. `sweep_steps`: one bar over that many batches for the whole
    fit (an LR sweep) instead of one per epoch. A display error never stops training: it is
    reported once on stderr and the bars stay off from then on.
    """

    order = 10
    loss_every = 10  # batches between loss reads: `.item()` waits for the device

    def __init__(self, enabled: bool | None = None, file: TextIO | None = None, sweep_steps: int | None = None):
        self.mode = progress_mode(enabled)
        self.file, self.sweep_steps = file, sweep_steps
        self.front: ProgressFront = "none"
        self.view: TextBars | NotebookBars | None = None
        self.broken = False

    def for_sweep(self, steps: int) -> ProgressBar:
        """A bar shown where this one shows (same mode and stream), over the `steps` batches of a sweep."""
        return ProgressBar({"on": True, "off": False}.get(self.mode), self.file, sweep_steps=steps)

    def before_fit(self, learn: Loop) -> None:
        self.view, self.front = None, "none"
        if not learn.is_main or self.broken:
            return
        stream = self.file if self.file is not None else sys.stderr
        in_kernel = self.file is None and screen.in_notebook_kernel()
        self.front = choose_front(self.mode, screen.is_tty(stream), in_kernel)
        if self.front == "notebook":
            self.view = NotebookBars(self.sweep_steps)
        elif self.front == "text":
            self.view = TextBars(stream, self.sweep_steps)

    def before_epoch(self, learn: Loop) -> None:
        self.start, self.n_images = time.perf_counter(), 0

    def before_batch(self, learn: Loop) -> None:
        # Opened at the first batch: progressive resizing may have changed the batch count.
        if self.view is not None and learn.state.iter == learn.state.start.batch:
            self._safely(lambda: self.view.start_epoch(learn.state))

    def after_batch(self, learn: Loop) -> None:
        if self.view is None:
            return
        self.n_images += learn.dls.train.batch_size * learn.dls.train.world_size
        done = learn.state.iter + 1 - learn.state.start.batch
        postfix = None
        if (done - 1) % self.loss_every == 0:
            loss = learn.state.loss.item()  # waits for the device: the images since the last read are done
            now = time.perf_counter()
            rate = self.n_images / max(now - self.start, 1e-9)
            postfix = f"loss {loss:.4f}, {rate:.0f} img/s"
            self.start, self.n_images = now, 0  # the next rate covers the next window of batches
        self._safely(lambda: self.view.advance(postfix))
        if learn.state.iter + 1 >= learn.state.n_batches:
            self._safely(lambda: self.view.end_epoch(learn.state))

    def after_fit(self, learn: Loop) -> None:
        if self.view is not None:
            self._safely(self.view.end_fit)
            self.view = None

    def _safely(self, show: Callable[[], None]) -> None:
        """Run a display step; if it raises, report it once and turn the bars off for good."""
        try:
            show()
        except Exception as err:  # display only: nothing the bar does may take training down
            if self.view is not None:
                self.view.abandon()
            self.view, self.front, self.broken = None, "none", True
            _report(f"progress bar disabled: {type(err).__name__}: {err}")


def _report(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr itself is what broke: nowhere left to say it
        pass
