"""Issue #37, group A: what vivace writes and prints. CSV cells a spreadsheet would run as formulas
(F15), terminal control characters in printed names and paths (F16), full disks (N70, N25, N26),
existing or unwritable outputs checked before any work (N64d, N45c, N64c, N71a)."""
import csv
import errno
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError
from torch import nn

import vivace.build
import vivace.checkpoint
import vivace.data
import vivace.export
import vivace.files
import vivace.runs
from vivace.checkpoint import load_checkpoint
from vivace.cli import main
from vivace.data import make_dataloaders
from vivace.experiments import write_results
from vivace.export import export_learner
from vivace.learner import Learner
from vivace.models import create_model
from vivace.records import write_log_csv

TINY_TRAIN = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--bs", "4",
              "--valid-bs", "8", "--workers", "1", "--threads", "2"]
FORMULA_CLASSES = ["=1+2", "@SUM(A1)", "-3+4", "+5"]
EVIL_CLASS = "evil\x1b]0;pwned\x07\nname"  # an OSC window title, a bell and a newline
EVIL_FILE = "a\x1b[2J\x1b[31mRED\x07x.png"  # clear the screen, turn red, ring the bell
FORMULA_FILES = ['=HYPERLINK("x","y").png', "-2+3.png"]
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # as on a full tmpfs


def _png(path: Path, colour: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 90, (48, 40, 3))
    pixels[..., colour % 3] += 150
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _one_line(err: str) -> str:
    """The stderr of a failed command: exactly one line, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class Boom(Exception):
    """Raised by a stand-in for the heavy work: reaching it means the check came too late."""


def _boom(*args, **kwargs):
    raise Boom


@pytest.fixture(scope="module")
def hostile_learner(tmp_path_factory):
    """An (untrained) quarter-width xresnet18 whose classes are formulas and an escape sequence."""
    root = tmp_path_factory.mktemp("hostile")
    for c, name in enumerate([*FORMULA_CLASSES, EVIL_CLASS]):
        for split, n in (("train", 2), ("val", 1)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                _png(root / split / name / f"{i}.png", c, seed=10 * c + i)
    dls = make_dataloaders(root, size_px=16, presize_px=24, batch_size=4, seed=0, device="cpu", workers=1,
                           progress=False)
    torch.manual_seed(0)
    return Learner(dls, create_model("xresnet18", n_out=len(dls.vocab), widen=0.25))


def _bundle_predicting(learn: Learner, label: str, path: Path) -> Path:
    """A bundle of `learn` whose every prediction is `label` (its output bias raised by 100)."""
    head = [m for m in learn.model.modules() if isinstance(m, nn.Linear)][-1]
    saved = head.bias.detach().clone()
    with torch.no_grad():
        head.bias[learn.dls.vocab.index(label)] += 100
    try:
        return export_learner(learn, path)
    finally:
        with torch.no_grad():
            head.bias.copy_(saved)


@pytest.fixture
def images(tiny_folder, tmp_path) -> Path:
    """A folder to predict: images named like formulas and like an escape sequence, and a broken one."""
    folder = tmp_path / "images"
    folder.mkdir()
    good = tiny_folder / "val" / "red" / "0.png"
    for name in [*FORMULA_FILES, EVIL_FILE]:
        shutil.copy(good, folder / name)
    (folder / "@broken.png").write_bytes(b"not a png")
    return folder


# -- F15: formulas in CSV cells ------------------------------------------------------------------

def test_F15_predict_csv_writes_formula_names_as_text(hostile_learner, images, tmp_path, monkeypatch, capsys):
    bundle = _bundle_predicting(hostile_learner, "=1+2", tmp_path / "formula.vivace")
    monkeypatch.chdir(images)  # paths relative to here: a cell starts with the file's own name
    assert main(["predict", str(bundle), ".", "--csv", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.reader((tmp_path / "p.csv").open(newline="")))
    cells = [cell for row in rows for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert rows[0][4:8] == ["'+5", "'-3+4", "'=1+2", "'@SUM(A1)"]  # the header: classes in vocab order
    by_path = {row[0]: row for row in rows[1:]}
    assert by_path["'=HYPERLINK(\"x\",\"y\").png"][1] == "'=1+2"  # path and label
    assert "'-2+3.png" in by_path
    assert by_path["'@broken.png"][3].startswith("'@broken.png: cannot read image")  # the error cell
    assert float(by_path["'-2+3.png"][2]) > 0.99  # numbers stay numbers


def test_F15_log_and_results_csv_neutralise_text_and_keep_numbers(tmp_path):
    """log.csv holds vivace's own numbers: a negative one stays a number, never `'-0.5`."""
    write_log_csv(tmp_path / "log.csv", [{"epoch": 0, "train_loss": -0.5, "valid_loss": 1.25}])
    assert (tmp_path / "log.csv").read_text().splitlines() == ["epoch,train_loss,valid_loss", "0,-0.5,1.25"]
    write_results([{"technique": "=1+2", "run": 0, "seed": 42, "accuracy": 0.5, "nll": -0.25, "ece": 0.1,
                    "seconds": 3.0}], tmp_path / "results.csv")
    rows = list(csv.reader((tmp_path / "results.csv").open(newline="")))
    assert rows[1] == ["'=1+2", "0", "42", "0.5", "-0.25", "0.1", "3.0"]


# -- F16: control characters printed to the terminal ---------------------------------------------

def _no_raw_controls(text: str) -> None:
    assert not [ch for ch in text if ord(ch) < 32 and ch != "\n" or 0x7f <= ord(ch) <= 0x9f], repr(text)


def test_F16_predict_escapes_file_and_class_names(hostile_learner, images, tmp_path, capsys):
    bundle = _bundle_predicting(hostile_learner, EVIL_CLASS, tmp_path / "evil.vivace")
    assert main(["predict", str(bundle), str(images / EVIL_FILE), "--topk", "5"]) == 0
    out = capsys.readouterr().out
    _no_raw_controls(out)
    lines = out.splitlines()
    assert len(lines) == 6  # the image's line and 5 classes: a newline in a class name splits none
    assert lines[0] == f"{images}/a\\x1b[2J\\x1b[31mRED\\x07x.png: evil\\x1b]0;pwned\\x07\\nname"
    assert main(["predict", str(bundle), str(images), "--csv", str(tmp_path / "p.csv")]) == 0
    captured = capsys.readouterr()
    _no_raw_controls(captured.out + captured.err)
    summary = captured.out.splitlines()
    assert summary[0] == ("3 of 4 images in folders predicted (1 failed); "
                          "predicted classes: evil\\x1b]0;pwned\\x07\\nname 3")
    assert summary[1] == f"wrote {tmp_path / 'p.csv'}" and len(summary) == 2


def test_F16_error_line_escapes_an_osc_title_sequence(tmp_path, capsys):
    bundle = tmp_path / "\x1b]0;pwned\x07.vivace"
    assert main(["predict", str(bundle), "x.png"]) == 2
    line = _one_line(capsys.readouterr().err)
    _no_raw_controls(line)
    assert line.startswith(f"vivace predict: error: no export bundle at {tmp_path}/\\x1b]0;pwned\\x07.vivace")


def test_F16_train_skipped_image_warning_is_escaped(tiny_folder, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    (data / "train" / "red" / "bad\x1b[2J\n.png").write_bytes(b"not a png")

    def show(message, category, filename, lineno, file=None, line=None):
        # pytest records warnings instead of printing them: print them as Python would.
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
    monkeypatch.setattr(warnings, "showwarning", show)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY_TRAIN]) == 0
    err = capsys.readouterr().err
    _no_raw_controls(err)
    warning = [line for line in err.splitlines() if line.startswith("vivace train: warning: skipped 1 of")]
    assert len(warning) == 1 and "red/bad\\x1b[2J\\n.png (" in warning[0]


# -- full disks: N70 (predict's CSV), N25 (a checkpoint), N26 (a bundle) -------------------------

def test_N70_full_disk_keeps_the_old_csv_in_one_line(hostile_learner, images, tmp_path, monkeypatch, capsys):
    bundle = _bundle_predicting(hostile_learner, "=1+2", tmp_path / "b.vivace")
    old = tmp_path / "out" / "p.csv"
    old.parent.mkdir()
    old.write_text("path,label\nold,row\n")
    real_writer = csv.writer

    class FillsTheDisk:
        """csv.writer whose second row finds the disk full, as on a nearly full tmpfs."""
        def __init__(self, f):
            self.writer, self.rows = real_writer(f), 0

        def writerow(self, row):
            self.rows += 1
            if self.rows == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.writer.writerow(row)
    monkeypatch.setattr(csv, "writer", FillsTheDisk)
    assert main(["predict", str(bundle), str(images), "--csv", str(old), "--overwrite"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0] == (f"vivace predict: error: {old}: cannot write it: the disk is full (No space left on device, "
                         f"errno 28 ENOSPC); the previous p.csv is kept unchanged; free some space, then run the "
                         f"command again")
    assert old.read_text() == "path,label\nold,row\n"
    assert [p.name for p in old.parent.iterdir()] == ["p.csv"]  # no temp file left


def _fill_disk_after(monkeypatch, module, calls: int) -> None:
    """`module.save_file` writes `calls` files, then fails as safetensors does on a full disk."""
    real, done = module.save_file, []

    def save_file(*args, **kwargs):
        if len(done) >= calls:
            raise SafetensorError(SAFETENSORS_FULL)
        done.append(args[1])
        return real(*args, **kwargs)
    monkeypatch.setattr(module, "save_file", save_file)


@pytest.fixture(scope="module")
def finished_run(tiny_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), "--epochs", "1", *TINY_TRAIN]) == 0
    return out


def test_N25_full_disk_during_training_keeps_the_last_checkpoint(finished_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)  # one epoch done: its last.safetensors is what must survive
    _fill_disk_after(monkeypatch, vivace.checkpoint, 0)
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (f"vivace train: error: {out}/last.safetensors: cannot write it: the disk is full (No space left "
                    f"on device, errno 28 ENOSPC); the previous last.safetensors is kept unchanged; free some "
                    f"space, then resume the run: vivace train --out {out} --resume")
    assert load_checkpoint(out / "last.safetensors")["position"] == {"epoch": 1, "batch": 0}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_N26_full_disk_on_export_says_no_bundle_was_written(finished_run, tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "model.vivace"
    _fill_disk_after(monkeypatch, vivace.export, 0)
    assert main(["export", str(finished_run), "-o", str(bundle)]) == 2
    line = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("weights:")]
    assert line == [f"vivace export: error: {bundle}: cannot write it: the disk is full (No space left on device, "
                    f"errno 28 ENOSPC); no model.vivace was written; free some space, then run the command again"]
    assert list(tmp_path.iterdir()) == []
    bundle.write_bytes(b"the bundle in service")  # --overwrite on a full disk: the old one stays
    assert main(["export", str(finished_run), "-o", str(bundle), "--overwrite"]) == 2
    assert "the previous model.vivace is kept unchanged" in capsys.readouterr().err
    assert bundle.read_bytes() == b"the bundle in service" and list(tmp_path.iterdir()) == [bundle]


# -- outputs checked before the work: N64d (existing), N45c / N64c / N71a (read-only folders) ----

def test_N64d_show_and_lr_find_refuse_an_existing_output(tiny_folder, tmp_path, monkeypatch, capsys):
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"mine")
    monkeypatch.setattr(vivace.data, "make_dataloaders", _boom)  # show's work
    monkeypatch.setattr(vivace.build, "build_dataloaders", _boom)  # lr-find's work
    data = ["--data", str(tiny_folder), "--size", "16", "--presize", "24", "--workers", "1"]
    assert main(["show", "batch", *data, "--out", str(keep)]) == 2
    assert _one_line(capsys.readouterr().err) == (f"vivace show: error: {keep} already exists: pass --overwrite "
                                                  f"to replace it, or --out PATH to write elsewhere")
    assert main(["lr-find", *data, "--threads", "2", "--plot", str(keep)]) == 2
    assert "already exists: pass --overwrite to replace it, or --plot PATH" in _one_line(capsys.readouterr().err)
    assert keep.read_bytes() == b"mine"
    with pytest.raises(Boom):  # --overwrite: the work starts
        main(["show", "batch", *data, "--out", str(keep), "--overwrite"])
    with pytest.raises(Boom):
        main(["lr-find", *data, "--threads", "2", "--plot", str(keep), "--overwrite"])


def _read_only(monkeypatch, folder: Path) -> Path:
    """`folder`, made read-only. We run as root, whom mode 0o555 does not stop, so the permission
    check vivace asks (`vivace.files._can_write`, os.access underneath) is told so as well."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    real = vivace.files._can_write
    monkeypatch.setattr(vivace.files, "_can_write", lambda f: Path(f).resolve() != folder.resolve() and real(f))
    return folder


def test_N45c_lr_find_checks_its_plot_folder_before_the_sweep(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(_read_only(monkeypatch, tmp_path / "ro"))  # the default plot, lr_find.png, goes here
    monkeypatch.setattr(vivace.build, "build_dataloaders", _boom)
    assert main(["lr-find", "--data", str(tiny_folder), "--size", "16", "--presize", "24", "--threads", "2"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == "vivace lr-find: error: cannot write to --plot lr_find.png: it is read-only"


def test_N64c_show_checks_its_out_folder_before_reading_data(tiny_folder, tmp_path, monkeypatch, capsys):
    out = _read_only(monkeypatch, tmp_path / "ro") / "batch.png"
    monkeypatch.setattr(vivace.data, "make_dataloaders", _boom)
    assert main(["show", "batch", "--data", str(tiny_folder), "--out", str(out)]) == 2
    assert _one_line(capsys.readouterr().err) == f"vivace show: error: cannot write to --out {out}: it is read-only"


def test_N71a_report_checks_the_run_folder_before_scoring(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    _read_only(monkeypatch, run)
    monkeypatch.setattr(vivace.runs, "load_run_weights", _boom)
    assert main(["report", str(run)]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"vivace report: error: cannot write to the run folder {run} (for report.html): it is read-only; make it "
        f"writable, or copy the run folder somewhere writable and report on the copy")
