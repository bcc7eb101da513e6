"""Where progress shows: a terminal, a Jupyter kernel (widget or text), or nowhere (a pipe, CI)."""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Literal, TextIO

PROGRESS_MODES = ("on", "off", "auto")
ProgressFront = Literal["widget", "text", "none"]


def progress_mode(enabled: bool | None = None) -> str:
    """'on', 'off' or 'auto': from `enabled` when given, else from VIVACE_PROGRESS (default auto)."""
    if enabled is not None:
        return "on" if enabled else "off"
    mode = os.environ.get("VIVACE_PROGRESS", "").strip().lower() or "auto"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"VIVACE_PROGRESS={mode!r}: expected one of {', '.join(PROGRESS_MODES)}")
    return mode


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
