"""Issue #37, group C: data folders, the presize cache, run data, bundles and reports.

Each test is named by its finding id and fails on the code before the fix. The setup is the
issue's: a 2-class folder of 40x48 PNGs (12 train and 4 val images per class) and `s1`, a finished
tiny run on it, exported.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from vivace.cli import main
from vivace.data import make_dataloaders, make_source
from vivace.data import cache as cache_module
from vivace.data.cache import build_cache
from vivace.data.sources import find_images
from vivace.export import load
from vivace.files import content_hash
from vivace.recipe import TrainOptions, load_recipe, make_recipe, resolve
from vivace import report

TINY = dict(size_px=16, presize_px=24, widen=0.25, batch_size=8, epochs=1)


def make_syn(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n_train: int = 12, n_valid: int = 4) -> Path:
    """train/<class>/*.png and val/<class>/*.png, 40x48, each class a noisy dominant colour."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_valid)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 90, (48, 40, 3))
                pixels[..., c % 3] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@contextmanager
def deadline(seconds: int):
    """TimeoutError if the block runs longer than `seconds` (a FIFO or a dead worker would block forever)."""
    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def error_line(capsys) -> str:
    """The error line of a CLI call, checked to be its only one (a `weights: ...` line may come first)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def s1(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny run trained from its parent folder with `--data syn` (relative), exported."""
    from vivace.train import train
    base = tmp_path_factory.mktemp("s1")
    make_syn(base / "syn")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        train(make_recipe(data="syn", **TINY), TrainOptions(out="s1", workers=1))
        assert main(["export", "s1"]) == 0
    run = base / "s1"
    return {"base": base, "data": base / "syn", "run": run, "bundle": run / "export.vivace"}


def copy_run(s1: dict[str, Path], tmp_path: Path, data: str | None = None) -> Path:
    """A copy of s1's run folder whose config.json names `data` (default: a copy of s1's data)."""
    run = tmp_path / "run"
    shutil.copytree(s1["run"], run)
    if data is None:
        data = str(tmp_path / "data")
        shutil.copytree(s1["data"], data)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": data}))
    return run


# -- N21: the cache's validity rule ------------------------------------------------------------
def test_N21_same_size_rewrite_with_restored_mtime_rebuilds_the_cache(tmp_path):
    files = [tmp_path / "a.bmp", tmp_path / "b.bmp"]
    for f in files:  # BMP: uncompressed, so other pixels are the same number of bytes
        Image.new("RGB", (32, 32), (200, 0, 0)).save(f)
    first = build_cache(files, 24, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert first.pixels[0, 0, 0].tolist() == [200, 0, 0]
    st = files[0].stat()
    Image.new("RGB", (32, 32), (0, 0, 200)).save(files[0])
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
    assert (files[0].stat().st_size, files[0].stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = build_cache(files, 24, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert second.directory != first.directory
    assert second.pixels[0, 0, 0].tolist() == [0, 0, 200]


# -- N22, N23c, N23: the vocabulary comes from the checkpoint; absolute data paths ------------
def rename_class(data: Path, old: str, new: str) -> None:
    for split in ("train", "val"):
        (data / split / old).rename(data / split / new)


def test_N22_evaluate_refuses_data_whose_classes_changed(s1, tmp_path, capsys):
    run = copy_run(s1, tmp_path)
    rename_class(tmp_path / "data", "cat", "aardvark")
    assert main(["evaluate", str(run)]) == 2
    err = error_line(capsys)
    assert "last.safetensors" in err and "trained on 2 classes" in err and "not in the data: cat; new: aardvark" in err


def test_N22_export_keeps_the_model_classes_and_says_the_data_changed(s1, tmp_path):
    run = copy_run(s1, tmp_path)
    rename_class(tmp_path / "data", "cat", "aardvark")
    with pytest.warns(UserWarning, match=r"the data's classes differ from the model's \(not in the data: cat; new: "
                                         r"aardvark\); using the model's 2 classes"):
        assert main(["export", str(run), "-o", str(tmp_path / "m.vivace")]) == 0
    predictor = load(tmp_path / "m.vivace", device="cpu")
    assert predictor.vocab == ["cat", "dog"]
    assert predictor.predict(s1["data"] / "val" / "cat" / "0.png").label == "cat"


def test_N23c_config_json_records_the_data_folder_as_an_absolute_path(s1, tmp_path, monkeypatch):
    assert json.loads((s1["run"] / "config.json").read_text())["data"] == str(s1["data"])  # trained with --data syn
    monkeypatch.chdir(tmp_path)
    assert resolve(make_recipe(data="mv1"), torch.device("cpu")).data == str(tmp_path / "mv1")
    assert resolve(make_recipe(data="imagenette-160"), torch.device("cpu")).data == "imagenette-160"


def test_N23c_an_old_relative_data_path_naming_another_folder_is_caught(s1, tmp_path, monkeypatch, capsys):
    run = copy_run(s1, tmp_path, data="mv1")  # as configs before absolute paths recorded it
    monkeypatch.chdir(tmp_path)
    make_syn(tmp_path / "mv1", classes=("apple", "dog"))  # an unrelated mv1/ where export runs
    changed = r"the data's classes differ from the model's \(not in the data: cat; new: apple"
    with pytest.warns(UserWarning, match=changed):
        assert main(["export", str(run), "-o", "m.vivace"]) == 0
    capsys.readouterr()
    assert load(tmp_path / "m.vivace", device="cpu").vocab == ["cat", "dog"]
    assert main(["evaluate", str(run)]) == 2
    assert "trained on 2 classes" in error_line(capsys)


def test_N23_a_moved_data_folder_names_config_json_and_its_field(s1, tmp_path, capsys):
    run = copy_run(s1, tmp_path)
    (tmp_path / "data").rename(tmp_path / "moved")
    assert main(["export", str(run)]) == 2
    err = error_line(capsys)
    assert f"{run / 'config.json'}: data '{tmp_path / 'data'}' no longer exists" in err
    assert "edit the field data" in err and "--data" not in err
    (run / "summary.json").unlink()  # a run to resume: the same line, not one about a --data never given
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = error_line(capsys)
    assert f"{run / 'config.json'}: data '{tmp_path / 'data'}' no longer exists" in err and "--data" not in err


# -- N56, N56b: the validation folder ----------------------------------------------------------
def test_N56_valid_name_equal_to_the_training_folder_is_refused(tmp_path):
    make_syn(tmp_path)
    with pytest.raises(ValueError, match="--valid-name train is the training folder"):
        make_source(tmp_path, valid_name="train")


def test_N56b_val_folders_linked_to_train_folders_are_named(tmp_path):
    make_syn(tmp_path)
    shutil.rmtree(tmp_path / "val")
    (tmp_path / "val").mkdir()
    for name in ("cat", "dog"):
        (tmp_path / "val" / name).symlink_to(tmp_path / "train" / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"val/ has no images of its own: its 2 symlinks \(val/cat -> "):
            make_source(tmp_path)


# -- N57b, N58: images the cache could not read ------------------------------------------------
def test_N57b_unreadable_images_are_said_on_every_run(tmp_path):
    data = make_syn(tmp_path / "data")
    (data / "train" / "cat" / "0.png").write_bytes(b"not a png")
    for run in range(2):  # built, then reused: both say it
        with pytest.warns(UserWarning, match=r"skipped 1 of 32 images that could not be decoded.*0\.png") as caught:
            make_dataloaders(data, size_px=16, presize_px=24, batch_size=8, workers=1, progress=False,
                             cache_dir=tmp_path / "cache")
        assert "delete " + str(tmp_path / "cache") in str(caught[0].message)


def test_N58_the_split_line_counts_only_the_images_used(tmp_path, capsys):
    data = make_syn(tmp_path / "data")
    (data / "train" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="could not be decoded"):
        dls = make_dataloaders(data, size_px=16, presize_px=24, batch_size=8, workers=1, progress=True,
                               cache_dir=tmp_path / "cache")
    line = "1 unreadable image left out: 23 train and 8 validation images used"
    assert line in capsys.readouterr().out and line in dls.source.split_note


# -- N63: a run folder is never data -----------------------------------------------------------
def test_N63_a_run_folder_inside_the_data_folder_is_not_a_class(tmp_path):
    for name, colour in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 48), colour).save(tmp_path / name / f"{i}.png")
    run = tmp_path / "runs" / "20261206-101010"  # `--data .` with the default --out
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "recipe.txt").write_text("")
    Image.new("RGB", (40, 48)).save(run / "losses.png")
    with pytest.warns(UserWarning, match=r"skipped 1 vivace run folders \(runs/20261206-101010\)"):
        files = find_images(tmp_path)
    assert len(files) == 6 and all("runs" not in f.parts for f in files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert make_source(tmp_path).vocab == ["cat", "dog"]


# -- N27, N27b: a full disk for the cache, a dead worker ----------------------------------------
def test_N27_too_little_free_space_for_the_cache_is_one_error(tmp_path, monkeypatch):
    data = make_syn(tmp_path / "data")
    monkeypatch.setenv("VIVACE_HOME", str(tmp_path / "home"))
    full = SimpleNamespace(total=2**21, used=2**21 - 1000, free=1000)  # a full 2 MiB tmpfs
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    with pytest.raises(RuntimeError) as caught:
        build_cache(find_images(data), 24, workers=1, progress=False)
    message = str(caught.value)
    assert str(tmp_path / "home" / "cache") in message and "VIVACE_HOME" in message
    assert "needs 1.1 MiB" in message and "has 0.0 MiB free" in message


def test_N27b_a_worker_that_dies_is_an_error_not_a_hang(tmp_path, monkeypatch):
    data = make_syn(tmp_path / "data")
    parent, real = os.getpid(), cache_module.load_image_rgb

    def die_in_a_worker(path, presize, max_aspect):  # as a worker killed by SIGBUS on a full disk
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, presize, max_aspect)

    monkeypatch.setattr(cache_module, "load_image_rgb", die_in_a_worker)  # inherited by forked workers
    with deadline(30), pytest.raises(RuntimeError, match="a process decoding images into the presize cache .* died"):
        build_cache(find_images(data), 24, cache_dir=tmp_path / "c", workers=2, progress=False)


# -- N32: only regular files -------------------------------------------------------------------
def test_N32_a_fifo_named_like_an_image_is_skipped_not_opened(tmp_path):
    data = make_syn(tmp_path / "data")
    os.mkfifo(data / "train" / "cat" / "pipe.png")
    with pytest.warns(UserWarning, match=r"1 files that are not regular files \(train/cat/pipe\.png"):
        files = find_images(data)
    assert data / "train" / "cat" / "pipe.png" not in files and len(files) == 32
    with deadline(30), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dls = make_dataloaders(data, size_px=16, presize_px=24, batch_size=8, workers=1, progress=False,
                               cache_dir=tmp_path / "cache")
    assert len(dls.source.train_files) == 24


def test_N32_predict_on_a_fifo_fails_that_image_instead_of_blocking(s1, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.png")
    shutil.copy(s1["data"] / "val" / "cat" / "0.png", tmp_path / "cat.png")
    with deadline(30):
        assert main(["predict", str(s1["bundle"]), str(tmp_path / "pipe.png"), str(tmp_path / "cat.png")]) == 0
    assert "pipe.png is not a regular file" in capsys.readouterr().err


# -- N47: report on damaged run records --------------------------------------------------------
LOG_HEADER = "epoch,train_loss,valid_loss,accuracy,time\n"


def test_N47b_inf_in_log_csv_is_drawn_not_a_traceback(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(LOG_HEADER + "0,0.9,inf,0.5,inf\n1,0.8,0.7,0.6,3.0\n")
    rows = report.read_log(path)
    assert "<td>inf</td>" in report.epochs_section(rows) and "00:03" in report.epochs_section(rows)
    assert report.curves_png(rows).startswith(b"\x89PNG")


def test_N47c_a_log_row_with_an_extra_field_names_the_file_and_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(LOG_HEADER + "0,0.9,0.8,0.5,3.0\n1,0.8,0.7,0.6,3.0,99\n")
    with pytest.raises(ValueError, match=r"log\.csv: line 3 has 6 fields, the header 5"):
        report.read_log(path)


def test_N47a_a_bad_value_in_log_csv_names_the_file_line_and_field(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(LOG_HEADER + "0,abc,0.8,0.5,3.0\n")
    with pytest.raises(ValueError, match=r"log\.csv: line 2, field train_loss: 'abc' is not a number"):
        report.read_log(path)


def test_N47f_a_summary_json_that_is_a_list_is_one_line_naming_it(s1, tmp_path, capsys):
    run = copy_run(s1, tmp_path, data=str(s1["data"]))
    (run / "summary.json").write_text("[1, 2]")
    assert main(["report", str(run)]) == 2
    assert f"{run / 'summary.json'}: must hold a JSON object, got list" in error_line(capsys)


def test_N47d_bad_values_in_summary_json_name_the_file_or_read_as_unknown(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"accuracy": 0.5, "train_seconds": NaN}')
    assert "unknown" in report.headline({}, report._read_json(path), [], "cpu")
    path.write_text('{"accuracy": 0.5,')
    with pytest.raises(ValueError, match=r"summary\.json: not valid JSON"):
        report._read_json(path)


# -- N50b: bounded sizes in a bundle ------------------------------------------------------------
def edited_bundle(bundle: Path, out: Path, edit) -> Path:
    """A copy of `bundle` with its info changed by `edit` and its sha256 recomputed (as an attacker would)."""
    with safe_open(str(bundle), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["info"])
    edit(info)
    info_json = json.dumps(info, sort_keys=True)
    save_file(tensors, str(out), metadata={**meta, "info": info_json, "sha256": content_hash(info_json, tensors)})
    return out


def test_N50b_a_bundle_presize_beyond_the_bound_is_refused(s1, tmp_path):
    path = edited_bundle(s1["bundle"], tmp_path / "big.vivace", lambda info: info.update(size=60000, presize=60000))
    with pytest.raises(ValueError, match=r"bundle field 'size' must be an integer >= 1 and <= 4096"):
        load(path, device="cpu")


@pytest.mark.parametrize("widen", [2.0, 64.0])
def test_N50b_a_bundle_config_wider_than_its_weights_is_refused_before_allocating(s1, tmp_path, widen):
    path = edited_bundle(s1["bundle"], tmp_path / "wide.vivace", lambda info: info["config"].update(widen=widen))
    with pytest.raises(ValueError) as caught:
        load(path, device="cpu")
    message = str(caught.value)
    assert "\n" not in message and "in the bundle" in message and "by its config" in message


def test_N50b_config_json_sizes_are_bounded_as_flags_are(s1, tmp_path):
    config = json.loads((s1["run"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "presize_px": 60000}))
    with pytest.raises(ValueError, match=r"presize_px=60000 must be in \[1, 4096\]"):
        load_recipe(tmp_path / "config.json").validate()  # as export, evaluate and report check it
    with pytest.raises(ValueError, match=r"presize_px=60000 must be in \[1, 4096\]"):
        make_recipe(size_px=16, presize_px=60000)  # as --presize-px is checked


# -- N59c, N64a: the CLI's checks --------------------------------------------------------------
def test_N59c_predict_on_cuda_without_cuda_is_one_line(s1, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", str(s1["bundle"]), str(s1["data"] / "val" / "cat" / "0.png"), "--device", "cuda"]) == 2
    assert "device 'cuda': CUDA is not available here" in error_line(capsys)


def test_N64a_show_refuses_a_size_larger_than_the_presize(s1, tmp_path, capsys):
    out = tmp_path / "batch.png"
    argv = ["show", "batch", "--data", str(s1["data"]), "--size-px", "32", "--presize-px", "24", "--out", str(out)]
    assert main(argv) == 2
    assert "presize_px=24 must be >= size_px=32" in error_line(capsys) and not out.exists()
