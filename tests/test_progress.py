"""Progress: a live bar in a terminal and in notebooks, none in a pipe, and never a crash."""
from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import subprocess
import sys
import termios
import time
import types
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder
from vivace import progress
from vivace.progress import ProgressBar
from vivace.learner import Learner
from vivace.models import create_model

REPO = Path(__file__).resolve().parents[1]


def tiny_learner(dls, bar: ProgressBar | None) -> Learner:
    torch.manual_seed(0)
    learn = Learner(dls, create_model("xresnet18", n_out=len(dls.vocab), widen=0.25))
    learn.cbs = [cb for cb in learn.cbs if not isinstance(cb, ProgressBar)] + ([bar] if bar else [])
    return learn


class BrokenStream(io.TextIOBase):
    """A stream whose every write fails, as a closed pipe or a broken notebook front does."""

    def write(self, text: str) -> int:
        raise OSError("display went away")


# -- (b) a forced bar writes epoch, batches, loss and images/s ---------------------------------
def test_forced_bar_shows_epoch_batches_loss_and_speed(tiny_dls):
    stream = io.StringIO()
    learn = tiny_learner(tiny_dls, ProgressBar(enabled=True, file=stream))
    learn.fit_one_cycle(2, 1e-2)
    text = stream.getvalue()
    n = len(tiny_dls.train)
    assert "\r" in text  # redrawn in place
    assert "epoch 1/2" in text and "epoch 2/2" in text
    # tqdm redraws at most every 0.1 s, except when opened and when the loss is shown: test those.
    assert f"0/{n} batches" in text and f"1/{n} batches" in text
    assert "loss " in text and "img/s" in text
    assert len(learn.recorder.rows) == 2


def test_no_bar_in_a_pipe(tiny_dls, capsys, monkeypatch):
    monkeypatch.delenv("VIVACE_PROGRESS", raising=False)
    learn = tiny_learner(tiny_dls, ProgressBar())  # auto; pytest's captured stderr is no terminal
    learn.fit(1, 1e-2)
    out = capsys.readouterr()
    assert "batches" not in out.err and "\r" not in out.err
    assert len(out.out.strip().splitlines()) == 2  # the table: header and one line per epoch


# -- (c) a display that raises never takes training down -------------------------------------
def test_a_failing_display_is_reported_once_and_training_goes_on(tiny_dls, capsys):
    learn = tiny_learner(tiny_dls, ProgressBar(enabled=True, file=BrokenStream()))
    learn.fit(2, 1e-2)
    assert len(learn.recorder.rows) == 2 and learn.state.failure is None
    reports = [line for line in capsys.readouterr().err.splitlines() if "progress bar disabled" in line]
    assert reports == ["progress bar disabled: OSError: display went away"]


# -- how the front is chosen -------------------------------------------------------------------
@pytest.mark.parametrize("mode, tty, kernel, widgets, front", [
    ("auto", True, False, False, "text"),     # a terminal
    ("auto", False, False, False, "none"),    # a pipe, CI
    ("auto", False, True, True, "widget"),    # Jupyter with ipywidgets
    ("auto", False, True, False, "text"),     # Jupyter without: a text bar on one line
    ("on", False, False, False, "text"),      # forced
    ("off", True, True, True, "none"),        # switched off
])
def test_front_choice(mode, tty, kernel, widgets, front):
    assert progress.choose_front(mode, tty, kernel, widgets) == front


def test_mode_from_argument_and_environment(monkeypatch):
    monkeypatch.setenv("VIVACE_PROGRESS", "off")
    assert progress.progress_mode() == "off"
    assert progress.progress_mode(True) == "on"  # the argument wins
    monkeypatch.setenv("VIVACE_PROGRESS", "ON")
    assert progress.progress_mode() == "on"
    monkeypatch.delenv("VIVACE_PROGRESS")
    assert progress.progress_mode() == "auto"
    monkeypatch.setenv("VIVACE_PROGRESS", "yes")
    with pytest.raises(ValueError, match="environment variable VIVACE_PROGRESS='yes' must be one of on, off, auto"):
        ProgressBar()


def test_kernel_detection_reads_an_imported_ipython_only(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not progress.in_notebook_kernel()
    assert "IPython" not in sys.modules  # detection never imports it
    kernel_shell = types.SimpleNamespace(kernel=object())
    terminal_shell = types.SimpleNamespace()  # IPython in a terminal: no kernel
    for shell, expected in ((kernel_shell, True), (terminal_shell, False), (None, False)):
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda s=shell: s))
        assert progress.in_notebook_kernel() is expected


# -- (d) the notebook path, with the kernel detection simulated ------------------------------------
def test_in_a_kernel_without_widgets_a_text_bar_goes_to_stderr(tiny_dls, capsys, monkeypatch):
    monkeypatch.delenv("VIVACE_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "in_notebook_kernel", lambda: True)
    monkeypatch.setattr(progress, "widgets_available", lambda: False)
    learn = tiny_learner(tiny_dls, ProgressBar())  # auto, and stderr is no terminal
    learn.fit(1, 1e-2)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "batches" in err
    assert "\n" not in err.strip()  # the notebook redraws it on one line: carriage returns only


def test_in_a_kernel_with_widgets_the_notebook_bar_is_chosen(tiny_dls, monkeypatch):
    monkeypatch.delenv("VIVACE_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "in_notebook_kernel", lambda: True)
    monkeypatch.setattr(progress, "widgets_available", lambda: True)
    bar = ProgressBar()
    bar.before_fit(tiny_learner(tiny_dls, bar))
    assert bar.front == "widget"


# -- (a) `vivace train` end to end under a pseudo-terminal ----------------------------------
def run_in_terminal(args: list[str], env: dict[str, str], timeout_s: float = 300) -> tuple[int, str]:
    """Run `args` with stdin, stdout and stderr on a pseudo-terminal; its exit code and output."""
    leader, follower = os.openpty()
    # A fresh pseudo-terminal is 0 columns wide, and tqdm fits its bar into 0 characters.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env, cwd=env["HOME"])
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout_s  # a safety net, not a speed test
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the child closed the terminal, it has exited
                    break
                if not data:
                    break
                chunks.append(data)
        return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)


@pytest.mark.slow
def test_train_in_a_terminal_shows_a_live_bar(tmp_path):
    folder = make_image_folder(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    env.pop("VIVACE_PROGRESS", None)
    code, out = run_in_terminal([sys.executable, "-m", "vivace", "train", "--data", str(folder),
                                 "--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24",
                                 "--epochs", "2", "--bs", "4", "--workers", "1", "--out", str(tmp_path / "run")],
                                env)
    assert code == 0, out
    assert "final accuracy" in out
    assert "\r" in out and "epoch 2/2" in out and "batches" in out and "img/s" in out
