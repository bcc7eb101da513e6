"""Figures that show themselves in a notebook, and never through pyplot.

vivace draws on `matplotlib.figure.Figure` directly: no global figure list, no GUI window from
a script, nothing kept alive after use. Such a figure has no inline display of its own, so a
notebook printed `<Figure size 750x750 with 9 Axes>`. This subclass gives it one: a cell that
returns it shows the PNG (Jupyter, VS Code, Colab). pyplot's inline backend shows only the
figures pyplot made, so nothing shows twice.
"""
from __future__ import annotations

import io

from matplotlib.figure import Figure as MatplotlibFigure


class Figure(MatplotlibFigure):
    """A matplotlib Figure (savefig and all) that a notebook shows as PNG when a cell returns it."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()
