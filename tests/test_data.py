"""make_dataloaders: which split it uses (folders or random), said in one line."""
import shutil

import pytest

from conftest import make_image_folder
from vivace.cli import main
from vivace.data import make_dataloaders

TINY_DATA = dict(size_px=16, presize_px=24, batch_size=4, valid_batch_size=8, seed=0, device="cpu", workers=1)
TINY_TRAIN = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--epochs", "1",
              "--bs", "4", "--valid-bs", "8", "--workers", "1"]


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("val"), n_train=4, n_valid=2)


def renamed_copy(src, dst, valid: str):
    """A copy of a train/ + val/ folder whose validation folder is called `valid`."""
    shutil.copytree(src, dst)
    (dst / "val").rename(dst / valid)
    return dst


def test_val_folder_is_the_split_and_said(val_folder, capsys):
    dls = make_dataloaders(val_folder, **TINY_DATA, progress=True)
    assert len(dls.valid.indices) == 6 and len(dls.train.indices) == 12
    assert "split: train/ (12 images) and val/ (6 images), 3 classes" in capsys.readouterr().out


def test_fastai_valid_folder_is_the_split_not_a_random_one(val_folder, tmp_path, capsys):
    folder = renamed_copy(val_folder, tmp_path / "fastai", "valid")
    dls = make_dataloaders(folder, **TINY_DATA, progress=True)
    valid_files = dls.source.valid_files
    assert len(valid_files) == 6 and all(f.parent.parent.name == "valid" for f in valid_files)
    assert not any(f.parent.parent.name == "valid" for f in dls.source.train_files)
    assert "split: train/ (12 images) and valid/ (6 images), 3 classes" in capsys.readouterr().out


def test_no_progress_prints_nothing(val_folder, capsys):
    make_dataloaders(val_folder, **TINY_DATA, progress=False)
    assert capsys.readouterr().out == ""


def test_no_split_folders_is_a_random_split_and_said(val_folder, tmp_path, capsys):
    flat = tmp_path / "flat"
    shutil.copytree(val_folder / "train", flat)
    dls = make_dataloaders(flat, **TINY_DATA, progress=True)
    assert len(dls.source.valid_files) == 2 and len(dls.source.train_files) == 10
    out = capsys.readouterr().out
    assert f"no train/val folders in {flat}: random split, 20 % validation, seed 42" in out
    assert "(10 train and 2 validation images, 3 classes)" in out


def test_train_cli_custom_valid_name(val_folder, tmp_path, capsys):
    folder = renamed_copy(val_folder, tmp_path / "holdout", "test")
    assert main(["train", "--data", str(folder), "--valid-name", "test", "--out", str(tmp_path / "run"),
                 *TINY_TRAIN]) == 0
    assert "split: train/ (12 images) and test/ (6 images), 3 classes" in capsys.readouterr().out


def test_train_cli_without_valid_name_names_the_folders(val_folder, tmp_path, capsys):
    folder = renamed_copy(val_folder, tmp_path / "holdout", "test")
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), *TINY_TRAIN]) == 2
    err = capsys.readouterr().err
    assert "has train/ but no validation folder val/ or valid/ beside it (found: test/)" in err
    assert "--valid-name NAME" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_train_cli_both_val_and_valid_is_an_error(val_folder, tmp_path, capsys):
    folder = tmp_path / "both"
    shutil.copytree(val_folder, folder)
    shutil.copytree(folder / "val", folder / "valid")
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), *TINY_TRAIN]) == 2
    assert f"{folder} has both val/ and valid/: keep one validation folder, or choose one with --valid-name val" \
        in capsys.readouterr().err
