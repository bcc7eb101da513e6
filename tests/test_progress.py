"""Progress: a live bar in a terminal and in notebooks, none in a pipe, and never a crash."""
from __future__ import annotations

import fcntl
import io
import json
import os
import select
import shlex
import struct
import subprocess
import sys
import termios
import time
import types
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder, tiny_model
from vivace import progress, screen
from vivace.checkpoint import load_checkpoint
from vivace.progress import ProgressBar
from vivace.learner import Learner
from vivace.lr_finder import lr_find
from vivace.models import create_model

REPO = Path(__file__).resolve().parents[1]


def tiny_learner(dls, bar: ProgressBar | None, model: torch.nn.Module | None = None) -> Learner:
    torch.manual_seed(0)
    learn = Learner(dls, model or create_model("xresnet18", n_out=len(dls.vocab), widen=0.25))
    learn.cbs = [cb for cb in learn.cbs if not isinstance(cb, ProgressBar)] + ([bar] if bar else [])
    return learn


def quick_learner(dls, bar: ProgressBar | None) -> Learner:
    """tiny_learner with conftest's one-conv model: the views are under test, not the training."""
    return tiny_learner(dls, bar, tiny_model(len(dls.vocab)))


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
@pytest.mark.parametrize("mode, tty, kernel, front", [
    ("auto", True, False, "text"),        # a terminal
    ("auto", False, False, "none"),       # a pipe, CI
    ("auto", False, True, "notebook"),    # Jupyter, VS Code, Colab: HTML, with or without ipywidgets
    ("on", False, False, "text"),         # forced
    ("on", False, True, "notebook"),
    ("off", True, True, "none"),          # switched off
])
def test_front_choice(mode, tty, kernel, front):
    assert progress.choose_front(mode, tty, kernel) == front


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
    assert not screen.in_notebook_kernel()
    assert "IPython" not in sys.modules  # detection never imports it
    kernel_shell = types.SimpleNamespace(kernel=object())
    terminal_shell = types.SimpleNamespace()  # IPython in a terminal: no kernel
    for shell, expected in ((kernel_shell, True), (terminal_shell, False), (None, False)):
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda s=shell: s))
        assert screen.in_notebook_kernel() is expected


# -- (d) the notebook view, with the kernel simulated (tests/test_notebook.py runs a real one) -------
class FakeOutput:
    """screen.LiveOutput without IPython: the states each output showed, listed in `outputs` in the
    order the outputs appeared (at their first show, as a display handle's)."""

    outputs: list[list[tuple[str, str]]] = []

    def __init__(self):
        self.shown: list[tuple[str, str]] = []

    def show(self, html: str, text: str) -> None:
        if not self.shown:
            FakeOutput.outputs.append(self.shown)
        self.shown.append((html, text))


@pytest.fixture
def fake_kernel(monkeypatch):
    """A kernel as vivace sees one; the outputs it showed, in the order they were made."""
    monkeypatch.delenv("VIVACE_PROGRESS", raising=False)
    monkeypatch.setattr(screen, "in_notebook_kernel", lambda: True)
    monkeypatch.setattr(screen, "LiveOutput", FakeOutput)
    FakeOutput.outputs = []
    return FakeOutput.outputs


def test_in_a_kernel_a_fit_shows_html_bars_then_the_table_replaced_in_place(tiny_dls, capsys, fake_kernel):
    learn = quick_learner(tiny_dls, ProgressBar())  # auto
    learn.fit(2, 1e-2)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""  # no text table, no text bar: both are HTML outputs
    bars, table = fake_kernel  # the bars' output comes first, above the table, as fastai's
    assert all("<progress" in html for html, _ in bars)
    assert any("epoch 1/2: 0/" in text for _, text in bars) and any("epoch 2/2" in text for _, text in bars)
    assert "2/2 epochs" in bars[-1][1] and "batches" not in bars[-1][1]  # at the end: the fit's bar alone
    assert len(table) == 2  # one state per epoch, each replacing the last
    last_html, last_text = table[-1]
    assert last_html.count("<tr>") == 2 and "<th>train_loss</th>" in last_html and "<th>accuracy</th>" in last_html
    assert last_text.splitlines()[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert len(learn.recorder.rows) == 2


def test_in_a_kernel_a_second_fit_gets_its_own_table(tiny_dls, capsys, fake_kernel):
    learn = quick_learner(tiny_dls, ProgressBar(enabled=False))
    learn.fit(2, 1e-2)
    learn.fit(1, 1e-2)
    first, second = fake_kernel
    assert first[-1][0].count("<tr>") == 2 and second[-1][0].count("<tr>") == 1


def test_lr_find_shows_one_bar_over_its_steps_in_a_kernel(tiny_dls, fake_kernel):
    learn = quick_learner(tiny_dls, ProgressBar())
    lr_find(learn, num_it=2 * len(tiny_dls.train) + 1)  # the sweep spans three epochs of batches
    (bars,) = fake_kernel
    texts = [text for _, text in bars]
    assert all(text.startswith("lr_find: ") and "epoch" not in text for text in texts)
    assert f"{2 * len(tiny_dls.train) + 1}/{2 * len(tiny_dls.train) + 1} batches" in texts[-1]


def test_lr_find_shows_one_bar_over_its_steps_in_a_terminal(tiny_dls):
    stream = io.StringIO()
    learn = quick_learner(tiny_dls, ProgressBar(enabled=True, file=stream))
    num_it = 2 * len(tiny_dls.train) + 1
    lr_find(learn, num_it=num_it)
    text = stream.getvalue()
    assert "lr_find   0%|" in text and f"/{num_it} batches" in text
    assert "epoch" not in text and f"/{len(tiny_dls.train)} batches" not in text


# -- (a) `vivace train` end to end under a pseudo-terminal ----------------------------------
def _control_this_terminal() -> None:
    """In the child: make stdin's pseudo-terminal its controlling terminal, so ^C reaches it as SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_terminal(args: list[str], env: dict[str, str], timeout_s: float = 300, columns: int = 120,
                    ctrl_c_when: str = "") -> tuple[int, str]:
    """Run `args` with stdin, stdout and stderr on a pseudo-terminal `columns` wide; its exit code and
    output. With `ctrl_c_when`, type Ctrl-C once the output shows that text, as a person would."""
    leader, follower = os.openpty()
    # A fresh pseudo-terminal is 0 columns wide, and tqdm fits its bar into 0 characters.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env, cwd=env["HOME"],
                            start_new_session=True, preexec_fn=_control_this_terminal)
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
                if ctrl_c_when and ctrl_c_when in b"".join(chunks).decode(errors="replace"):
                    os.write(leader, b"\x03")  # the terminal turns it into SIGINT for the foreground group
                    ctrl_c_when = ""
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


@pytest.mark.slow
def test_ctrl_c_saves_says_how_to_resume_and_the_resume_matches(tmp_path):
    """The first Ctrl-C in a terminal: a checkpoint at that batch, one line with the exact command,
    exit 130, no traceback; following that command ends as an uninterrupted run ends."""
    folder = make_image_folder(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    flags = ["--data", str(folder), "--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24",
             "--epochs", "8", "--bs", "2", "--workers", "1"]
    full = subprocess.run([sys.executable, "-m", "vivace", "train", *flags, "--out", str(tmp_path / "full")],
                          env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    cut = tmp_path / "cut"
    code, out = run_in_terminal([sys.executable, "-m", "vivace", "train", *flags, "--out", str(cut)], env,
                                ctrl_c_when="epoch 2/8")  # the second epoch's bar: Ctrl-C inside it
    assert code == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    said = [line for line in out.splitlines() if "interrupted at epoch" in line]
    assert len(said) == 1, out
    position = load_checkpoint(cut / "last.safetensors")["position"]
    assert f"epoch {position['epoch'] + 1}, batch {position['batch']} of 12" in said[0]
    assert position["batch"] > 0  # saved inside the epoch, at the batch Ctrl-C stopped
    command = said[0].split("continue with: ")[1].strip()
    assert command == f"vivace train --out {cut} --resume --workers 1"
    resumed = subprocess.run([sys.executable, "-m", *shlex.split(command)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("full", "cut"))
    for key in ("accuracy", "valid_loss", "nll"):
        assert a[key] == b[key]
