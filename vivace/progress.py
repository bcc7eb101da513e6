"""The progress bar, and where it shows: a terminal, a Jupyter kernel (widget or text), or nowhere (a pipe, CI)."""
from __future__ import annotations

import importlib.util
import sys
import time
from typing import Callable, Literal, TextIO

from .callbacks import Callback, Loop
from .environment import env_choice

PROGRESS_MODES = ("on", "off", "auto")
ProgressFront = Literal["widget", "text", "none"]


def progress_mode(enabled: bool | None = None) -> str:
    """'on', 'off' or 'auto': from `enabled` when given, else from VIVACE_PROGRESS (default auto)."""
    if enabled is not None:
        return "on" if enabled else "off"
    return env_choice("VIVACE_PROGRESS", PROGRESS_MODES, "auto")


def in_notebook_kernel() -> bool:
    """True inside a Jupyter kernel (a shell with a kernel: Jupyter, VS Code, Colab)."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it already: never import it here
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def widgets_available() -> bool:
    """True when ipywidgets is installed, which tqdm's notebook bar needs."""
    return importlib.util.find_spec("ipywidgets") is not None


def choose_front(mode: str, stream_is_tty: bool, in_kernel: bool, has_widgets: bool) -> ProgressFront:
    """Which bar to show: tqdm's widget in a kernel with ipywidgets, a text bar, or none."""
    if mode == "off":
        return "none"
    if in_kernel and has_widgets:
        return "widget"
    # A kernel's stderr is no terminal, but notebooks redraw a line on carriage return.
    return "text" if mode == "on" or stream_is_tty or in_kernel else "none"


def is_tty(stream: TextIO) -> bool:
    """True when `stream` is a terminal (a stream without isatty is not)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressBar(Callback):
    """A live bar per epoch: epoch i/N, batches done, loss, images/s and the epoch's ETA.

    Where it shows is `enabled` (True: always, False: never), else the VIVACE_PROGRESS
    environment variable: `on`, `off` or `auto` (the default). Auto shows a bar in a terminal
    (stderr a tty) and in a Jupyter kernel (tqdm's widget with ipywidgets installed, else a text
    bar redrawn on one line), and none in a pipe or CI, where the Recorder's one line per epoch
    is the progress. `file` sends a text bar to that stream instead of stderr. A display error
    never stops training: it is reported once on stderr and the bar stays off from then on.
    """

    order = 10
    loss_every = 10  # batches between loss reads: `.item()` waits for the device
    text_format = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} batches [{elapsed}<{remaining}{postfix}]"

    def __init__(self, enabled: bool | None = None, file: TextIO | None = None):
        self.mode = progress_mode(enabled)
        self.file = file
        self.front: ProgressFront = "none"
        self.bar = None
        self.broken = False

    def before_fit(self, learn: Loop) -> None:
        if not learn.is_main or self.broken:
            self.front = "none"
            return
        stream = self.file if self.file is not None else sys.stderr
        in_kernel = self.file is None and in_notebook_kernel()
        self.front = choose_front(self.mode, is_tty(stream), in_kernel, widgets_available())

    def before_epoch(self, learn: Loop) -> None:
        self._close()
        self.start, self.n_images = time.perf_counter(), 0

    def before_batch(self, learn: Loop) -> None:
        # Opened at the first batch: progressive resizing may have changed the batch count.
        if self.front != "none" and learn.state.iter == learn.state.start.batch:
            self._safely(lambda: self._open(learn))

    def after_batch(self, learn: Loop) -> None:
        if self.bar is None:
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
        self._safely(lambda: self._advance(postfix))
        if learn.state.iter + 1 >= learn.state.n_batches:
            self._close()  # before validation, so the epoch's table row prints on a clean line

    def after_epoch(self, learn: Loop) -> None:
        self._close()

    after_fit = after_epoch

    def _open(self, learn: Loop) -> None:
        desc = f"epoch {learn.state.epoch + 1}/{learn.state.n_epochs}"
        if self.front == "widget":
            from tqdm.notebook import tqdm as widget_tqdm
            self.bar = widget_tqdm(total=learn.state.n_batches, initial=learn.state.start.batch, desc=desc, leave=False)
            return
        from tqdm import tqdm
        self.bar = tqdm(total=learn.state.n_batches, initial=learn.state.start.batch, desc=desc, leave=False,
                        file=self.file if self.file is not None else sys.stderr, bar_format=self.text_format)

    def _advance(self, postfix: str | None) -> None:
        self.bar.update(1)
        if postfix is not None:
            self.bar.set_postfix_str(postfix)

    def _close(self) -> None:
        if self.bar is not None:
            self._safely(self.bar.close)
            self.bar = None

    def _safely(self, show: Callable[[], None]) -> None:
        """Run a display step; if it raises, report it once and turn the bar off for good."""
        try:
            show()
        except Exception as err:  # display only: nothing the bar does may take training down
            if self.bar is not None:
                self.bar.disable = True  # its close() and __del__ then draw nothing more
            self.bar, self.front, self.broken = None, "none", True
            _report(f"progress bar disabled: {type(err).__name__}: {err}")


def _report(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr itself is what broke: nowhere left to say it
        pass
