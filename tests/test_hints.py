"""Every hint an error message gives works when followed: each test provokes the error, reads the
hint from the message, does what it says and checks that the command then succeeds.

(The download hints, "place the extracted folder at ..." and "the archive at ...", are followed
in tests/test_datasets.py: test_ensure_dataset_existing_folder_skips_download and
test_download_skips_existing_verified_file. Ctrl-C's `--resume` command is followed in
tests/test_progress.py, the full disk's in tests/test_reliability_output.py.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import make_image_folder
from vivace.cli import main

pytestmark = pytest.mark.slow  # end to end: each test trains (tiny) runs and follows the commands

TINY = ["--arch", "xresnet18", "--widen", "0.25", "--size-px", "16", "--presize-px", "24", "--epochs", "1",
        "--batch-size", "8", "--workers", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("hints"))


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory) -> Path:
    """A finished tiny run, trained once for the module."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", "--data", str(folder), "--out", str(out), *TINY]) == 0
    return out


def error_of(argv: list[str], capsys) -> str:
    """The one error line `vivace ARGV` ends with (exit status 2)."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and ": error: " in lines[-1], lines
    return lines[-1]


def test_out_holding_a_finished_run_each_way_out_works(folder, run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    said = error_of(["train", "--data", str(folder), "--out", str(copy), *TINY], capsys)
    assert "pass --resume --epochs N (more than it trained) to train it longer" in said
    assert "--overwrite to replace it" in said and "or choose another --out" in said
    assert main(["train", "--out", str(copy), "--resume", "--epochs", "2", "--workers", "1"]) == 0  # longer
    assert main(["train", "--data", str(folder), "--out", str(copy), *TINY, "--overwrite"]) == 0
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "another"), *TINY]) == 0


def test_out_holding_an_unfinished_run_resume_continues_it(folder, tmp_path, capsys):
    out = tmp_path / "cut"
    assert main(["train", "--data", str(folder), "--out", str(out), *TINY]) == 0
    (out / "summary.json").unlink()  # as a run killed mid-way has none
    shutil.copy(out / "last.safetensors", tmp_path / "keep.safetensors")
    said = error_of(["train", "--data", str(folder), "--out", str(out), *TINY], capsys)
    assert "pass --resume to continue it" in said
    assert main(["train", "--data", str(folder), "--out", str(out), *TINY, "--epochs", "2", "--resume"]) == 0


def test_finished_resume_says_train_longer_with_more_epochs(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    said = error_of(["train", "--out", str(copy), "--resume", "--workers", "1"], capsys)
    assert "pass --epochs N (N > 1) to train it longer" in said
    assert main(["train", "--out", str(copy), "--resume", "--epochs", "2", "--workers", "1"]) == 0


def test_export_and_report_of_a_folder_that_is_no_run(folder, run, capsys):
    for command in ("export", "report", "evaluate"):
        said = error_of([command, str(folder)], capsys)
        assert "pass the --out of a `vivace train` run" in said
    assert main(["evaluate", str(run)]) == 0


def test_predict_of_a_missing_bundle_says_how_to_make_it(folder, run, tmp_path, capsys):
    bundle = tmp_path / "model.vivace"
    image = str(folder / "val" / "red" / "0.png")
    said = error_of(["predict", str(bundle), image], capsys)
    hint = said.split("create one with `")[1].split("`")[0]
    assert hint == f"vivace export RUN_DIR -o {bundle}"
    assert main(["export", str(run), "-o", str(bundle)]) == 0
    assert main(["predict", str(bundle), image]) == 0


def test_predict_of_a_folder_that_is_neither_names_both(folder, run, capsys):
    image = str(folder / "val" / "red" / "0.png")
    said = error_of(["predict", str(folder), image], capsys)
    assert "name a bundle file, or the --out of a `vivace train` run" in said
    assert main(["predict", str(run), image]) == 0  # a run folder: its final weights
    assert "weights: final (last.safetensors, epoch 1)" in capsys.readouterr().err
    assert main(["export", str(run)]) == 0
    assert main(["predict", str(run), image]) == 0  # now its export.vivace
    assert f"bundle: {run / 'export.vivace'}" in capsys.readouterr().err
    (run / "export.vivace").unlink()  # the module's run, as the other tests found it


def test_an_existing_output_overwrite_or_elsewhere(folder, run, tmp_path, capsys):
    csv = tmp_path / "p.csv"
    csv.write_text("mine\n")
    images = str(folder / "val")
    said = error_of(["predict", str(run), images, "--csv", str(csv)], capsys)
    assert "pass --overwrite to replace it, or --csv PATH to write elsewhere" in said
    assert main(["predict", str(run), images, "--csv", str(tmp_path / "elsewhere.csv")]) == 0
    assert main(["predict", str(run), images, "--csv", str(csv), "--overwrite"]) == 0
    assert csv.read_text().startswith("path,label")


def test_table_columns_without_a_table_say_pass_csv(folder, tmp_path, capsys):
    said = error_of(["train", "--data", str(folder), "--valid-col", "is_valid", *TINY], capsys)
    assert "pass it with --csv" in said
    rows = ["path,label,is_valid"] + [f"{p.relative_to(folder)},{p.parent.name},{p.parts[-3] == 'val'}"
                                      for p in sorted(folder.rglob("*.png"))]
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    assert main(["train", "--data", str(folder), "--valid-col", "is_valid", "--csv", str(table), *TINY,
                 "--out", str(tmp_path / "table")]) == 0


def test_two_validation_folders_choose_one(tmp_path, capsys):
    data = make_image_folder(tmp_path / "two")
    shutil.copytree(data / "val", data / "valid")
    said = error_of(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "a")], capsys)
    flag = said.split("or choose one with ")[1].split()
    assert flag[0] == "--valid-name"
    assert main(["train", "--data", str(data), *TINY, *flag, "--out", str(tmp_path / "b")]) == 0


def test_no_validation_folder_name_it(tmp_path, capsys):
    data = make_image_folder(tmp_path / "named")
    (data / "val").rename(data / "holdout")
    said = error_of(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "a")], capsys)
    assert "name it with --valid-name NAME" in said
    assert main(["train", "--data", str(data), *TINY, "--valid-name", "holdout", "--out", str(tmp_path / "b")]) == 0


def test_several_runs_resume_with_runs_n(folder, tmp_path, capsys):
    out = tmp_path / "many"
    assert main(["train", "--data", str(folder), "--out", str(out), *TINY, "--runs", "2"]) == 0
    (out / "summary.json").unlink()
    for record in ("summary.json", "last.safetensors", "best.safetensors", "log.csv"):
        (out / "run1" / record).unlink()  # the second run was killed before its first checkpoint
    said = error_of(["train", "--out", str(out), "--resume", "--workers", "1"], capsys)
    assert "pass --runs N, as many as it was started with" in said
    assert main(["train", "--out", str(out), "--resume", "--runs", "2", "--workers", "1"]) == 0
