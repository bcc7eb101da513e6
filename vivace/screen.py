"""Where output shows: a terminal (and how wide it is), a Jupyter kernel, or neither (a pipe, CI).

In a kernel (Jupyter, VS Code, Colab) vivace shows HTML outputs that it replaces in place
(`LiveOutput`): the progress bars and the epoch table. IPython is never imported here: a kernel
has imported it already, and a script never needs it.
"""
from __future__ import annotations

import shutil
import sys
from typing import Any, Callable, TextIO


def is_tty(stream: TextIO) -> bool:
    """True when `stream` is a terminal (a stream without isatty is not)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def terminal_columns(stream: TextIO) -> int | None:
    """The width of the terminal `stream` writes to ($COLUMNS first); None for a pipe or a file."""
    return shutil.get_terminal_size().columns if is_tty(stream) else None


def in_notebook_kernel() -> bool:
    """True inside a Jupyter kernel (a shell with a kernel: Jupyter, VS Code, Colab)."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it already: never import it here
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def display_in_notebook(draw: Callable[[], Any]) -> None:
    """Show what `draw()` returns (a Figure: its PNG) as an output of the running cell; outside a
    kernel, draw nothing."""
    if in_notebook_kernel():
        from IPython.display import display
        display(draw())


class LiveOutput:
    """One output of the running cell, shown once and then replaced in place (a display handle).

    The saved notebook keeps its last state as static HTML; `text` is what a frontend without
    HTML (a console) shows instead.
    """

    def __init__(self):
        self.handle = None

    def show(self, html: str, text: str) -> None:
        from IPython.display import display
        bundle = {"text/html": html, "text/plain": text}
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)
