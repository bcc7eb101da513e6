"""The epoch table: a row per epoch, as text that fits the terminal, or as HTML in a notebook.

The wide layout is the book's (full column names, six decimals). Where a terminal is narrower
than that, the compact one keeps every column on one line: short names, four decimals, and
single spaces if it must (the default metrics: 104 columns wide, 60 compact, 53 at the least).
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

WIDE_DIGITS, COMPACT_DIGITS = 6, 4
WIDE_MIN_WIDTH = 10  # the book's table pads every column to 10 characters
SHORT_NAMES = {"train_loss": "train", "valid_loss": "valid", "accuracy": "acc", "top5_accuracy": "top5",
               "calibration_error": "ece", "error_rate": "error", "accuracy_multi": "acc", "f1_macro": "f1"}


def cell(key: str, value: float, digits: int = WIDE_DIGITS) -> str:
    """One value as the table shows it: the epoch as an integer, the time as mm:ss, NaN blank."""
    if key == "epoch":
        return str(int(value))
    if key == "time":
        return f"{int(value) // 60:02d}:{int(value) % 60:02d}"
    return "" if math.isnan(value) else f"{value:.{digits}f}"  # NaN: an epoch that skipped validation


def cell_width(key: str, digits: int) -> int:
    """The usual width of a column's values (a loss under 10: 0.1234)."""
    return {"epoch": 3, "time": 5}.get(key, digits + 2)


@dataclass(frozen=True)
class TextLayout:
    """Column headers and widths, the decimals shown and the gap between columns."""

    headers: list[str]
    widths: list[int]
    digits: int
    gap: str = "  "

    @property
    def width(self) -> int:
        """The characters a full line takes."""
        return sum(self.widths) + len(self.gap) * (len(self.widths) - 1)

    def line(self, cells: list[str]) -> str:
        return self.gap.join(c.ljust(w) for c, w in zip(cells, self.widths)).rstrip()

    def header_line(self) -> str:
        return self.line(self.headers)

    def row_line(self, row: dict[str, float]) -> str:
        return self.line([cell(k, v, self.digits) for k, v in row.items()])


def wide_layout(names: list[str]) -> TextLayout:
    """The book's table: full names, every column at least 10 wide, six decimals."""
    return TextLayout(names, [max(len(n), WIDE_MIN_WIDTH) for n in names], WIDE_DIGITS)


def compact_layout(names: list[str], gap: str = "  ") -> TextLayout:
    """Short names (train, valid, acc, top5, ece), four decimals, columns as wide as their contents."""
    headers = [SHORT_NAMES.get(n, n) for n in names]
    widths = [max(len(h), cell_width(n, COMPACT_DIGITS)) for h, n in zip(headers, names)]
    return TextLayout(headers, widths, COMPACT_DIGITS, gap)


def fit_layout(names: list[str], columns: int | None) -> TextLayout:
    """The wide layout where it fits (or where no width binds: a pipe, a file), else a compact one.

    A line must leave the terminal's last column free: some terminals wrap a line that fills it.
    """
    layouts = [wide_layout(names), compact_layout(names), compact_layout(names, " ")]
    if columns is None:
        return layouts[0]
    return next((layout for layout in layouts if layout.width < columns), layouts[-1])


def html_table(names: list[str], rows: list[dict[str, float]]) -> str:
    """The rows as an HTML table with the book's headers and six decimals (fastai's notebook table)."""
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join("<tr>" + "".join(f"<td>{cell(k, v)}</td>" for k, v in row.items()) + "</tr>" for row in rows)
    return (f'<table border="1" class="dataframe vivace-epochs">'
            f'<thead><tr style="text-align: left;">{head}</tr></thead><tbody>{body}</tbody></table>')
