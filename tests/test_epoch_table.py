"""The epoch table: the book's wide layout where it fits, a compact one in a narrow terminal."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

from conftest import make_image_folder, tiny_model
from test_progress import run_in_terminal
from vivace import screen
from vivace.epoch_table import compact_layout, fit_layout, html_table, wide_layout
from vivace.learner import Learner
from vivace.metrics import make_metrics

REPO = Path(__file__).resolve().parents[1]
NAMES = ["epoch", "train_loss", "valid_loss", "accuracy", "top5_accuracy", "nll", "calibration_error", "time"]
ROW = {"epoch": 12.0, "train_loss": 2.302585, "valid_loss": 1.987654, "accuracy": 0.56, "top5_accuracy": 0.9375,
       "nll": 1.987654, "calibration_error": 0.051234, "time": 83.4}


def test_the_wide_layout_is_the_books_table():
    layout = wide_layout(NAMES[:4] + ["time"])
    assert layout.header_line() == "epoch       train_loss  valid_loss  accuracy    time"
    row = {k: ROW[k] for k in layout.headers}
    assert layout.row_line(row) == "12          2.302585    1.987654    0.560000    01:23"


def test_where_no_width_binds_the_table_is_wide():
    assert fit_layout(NAMES, None) == wide_layout(NAMES)  # a pipe, a file: what scripts parse stays as it was
    assert fit_layout(NAMES, 200) == wide_layout(NAMES)


@pytest.mark.parametrize("columns", [80, 60])
def test_every_line_fits_a_narrow_terminal(columns):
    layout = fit_layout(NAMES, columns)
    assert wide_layout(NAMES).width >= 80  # the default metrics' wide table would wrap here
    for line in (layout.header_line(), layout.row_line(ROW)):
        assert len(line) < columns, line  # the last column stays free: some terminals wrap a full line
    assert layout.header_line().split() == ["epoch", "train", "valid", "acc", "top5", "nll", "ece", "time"]
    assert layout.row_line(ROW).split() == ["12", "2.3026", "1.9877", "0.5600", "0.9375", "1.9877", "0.0512", "01:23"]


def test_the_compact_layout_keeps_columns_aligned():
    layout = compact_layout(NAMES)
    header, row = layout.header_line(), layout.row_line(ROW)
    for name, value in zip(header.split(), row.split()):
        assert header.index(name) == row.index(value, header.index(name)), (name, value)


def test_a_skipped_validation_is_blank_in_every_layout():
    row = {**ROW, "valid_loss": math.nan}
    assert compact_layout(NAMES).row_line(row).split()[2] == "0.5600"
    assert "<td></td>" in html_table(NAMES, [row])


def test_the_html_table_has_the_books_headers_and_a_row_per_epoch():
    table = html_table(NAMES, [{**ROW, "epoch": 0.0}, ROW])
    assert table.startswith("<table") and table.count("<tr>") == 2
    assert "<th>calibration_error</th>" in table and "<td>2.302585</td>" in table and "<td>01:23</td>" in table


def test_a_fit_in_a_60_column_terminal_prints_rows_that_do_not_wrap(tiny_dls, capsys, monkeypatch):
    monkeypatch.setattr(screen, "terminal_columns", lambda stream: 60)  # as a 60-column terminal reports
    learn = Learner(tiny_dls, tiny_model(len(tiny_dls.vocab)), metrics=make_metrics())
    learn.fit(2, 1e-2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["epoch", "train", "valid", "acc", "top5", "nll", "ece", "time"]
    assert all(len(line) < 60 for line in lines), lines
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]


@pytest.mark.slow
def test_train_in_a_60_column_terminal_prints_rows_that_do_not_wrap(tmp_path):
    folder = make_image_folder(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    for name in ("VIVACE_PROGRESS", "COLUMNS", "LINES"):
        env.pop(name, None)
    code, out = run_in_terminal([sys.executable, "-m", "vivace", "train", "--data", str(folder),
                                 "--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24",
                                 "--epochs", "2", "--bs", "4", "--workers", "1", "--out", str(tmp_path / "run")],
                                env, columns=60)
    assert code == 0, out
    lines = out.replace("\r\n", "\n").split("\n")  # the terminal ends a line with CR LF
    shown = [line.rsplit("\r", 1)[-1] for line in lines]  # what stays on screen after each redraw
    header = next(i for i, line in enumerate(shown) if line.startswith("epoch "))
    assert shown[header].split() == ["epoch", "train", "valid", "acc", "top5", "nll", "ece", "time"]
    rows = shown[header + 1:header + 3]
    assert [row.split()[0] for row in rows] == ["0", "1"], shown
    assert all(len(line) < 60 for line in [shown[header], *rows]), rows
