"""A run's folder over its life: checked before work, recipe first, never replaced by accident."""
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import pytest

from vivace.cli import main
from vivace.recipe import Recipe, TrainOptions
from vivace.runs import RUN_RECORDS, check_before_start

FLOATS = [f.name for cls in (Recipe, TrainOptions) for f in dataclasses.fields(cls) if isinstance(f.default, float)]

TINY = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--epochs", "2",
        "--bs", "4", "--valid-bs", "8", "--workers", "1"]


def error_of(argv, capsys) -> str:
    """Run the CLI, expect a usage error (exit 2), return its one-line message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def killed_while_caching(*args, **kwargs):
    raise KeyboardInterrupt  # what Ctrl-C (or the last thing before a kill) looks like mid-cache


def test_a_run_killed_while_caching_resumes_its_own_recipe(tmp_path, tiny_folder, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(sys.modules["vivace.build"], "make_dataloaders", killed_while_caching)
        assert main(["train", "--data", str(tiny_folder), "--out", str(out), *TINY]) == 130  # as the shell's
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ["vivace train: interrupted; files are written whole or not at all (`--resume` continues from "
                    "the last checkpoint)"]
    assert json.loads((out / "config.json").read_text())["data"] == str(tiny_folder)  # written first
    assert not (out / "last.safetensors").exists()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert "training its recipe (config.json) from the start" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == str(tiny_folder) and "preset" not in config  # not `quick` on the embedded set
    assert (out / "recipe.txt").read_text().startswith("# vivace recipe: preset (none);")
    assert len((out / "log.csv").read_text().splitlines()) == 3  # the recipe's 2 epochs, not quick's 16


@pytest.mark.parametrize("argv, message", [
    (["--mixup", "inf"], "mixup_alpha=inf must be a finite number >= 0"),
    (["--lr", "nan"], "lr=nan must be a finite number in (0, 10]"),
    (["--lr", "-1"], "lr=-1.0 must be in (0, 10]"),
    (["--ema=-inf"], "ema_decay=-inf must be a finite number in [0, 1)"),
    (["--max-warp", "0.8"], "max_warp=0.8 must be in [0, 0.5]"),
    (["--checkpoint-every-min", "-1"], "checkpoint_every_min=-1.0 must be >= 0"),
    (["--resume", "--overwrite"], "resume and overwrite contradict each other"),
])
def test_bad_values_stop_before_any_folder_exists(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in error_of(["train", "--out", str(out), *argv], capsys)
    assert not out.exists()


@pytest.mark.parametrize("name", FLOATS)
def test_every_float_field_rejects_inf_and_nan(name):
    cls = Recipe if name in Recipe.__dataclass_fields__ else TrainOptions
    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match=f"{name}=.* must be a finite number"):
            cls(**{name: value}).validate()


def test_every_float_field_has_a_range():
    for cls in (Recipe, TrainOptions):
        assert all(f.metadata["range"] for f in dataclasses.fields(cls) if isinstance(f.default, float))


def test_out_that_is_a_file_or_under_one(tmp_path, tiny_folder, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    data = ["--data", str(tiny_folder), *TINY]
    assert f"cannot write to --out {f}: it is a file, not a folder" in error_of(["train", "--out", str(f), *data], capsys)
    err = error_of(["train", "--out", str(f / "run"), *data], capsys)
    assert f"cannot write to --out {f / 'run'}: {f} is a file, not a folder" in err
    assert f.read_text() == "mine"


def deny_writes_to(monkeypatch, folder):
    """os.access says `folder` is read-only (tests run as root, where chmod does not stop writes)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if os.fspath(path) == str(folder)
                        else real_access(path, mode))


def test_read_only_out_is_named_before_any_work(tmp_path, tiny_folder, monkeypatch, capsys):
    deny_writes_to(monkeypatch, tmp_path)
    out = tmp_path / "x" / "run"
    err = error_of(["train", "--data", str(tiny_folder), "--out", str(out), *TINY], capsys)
    assert f"cannot write to --out {out}: parent {tmp_path} is read-only" in err
    assert not (tmp_path / "x").exists()


def test_unwritable_data_home_is_named(tmp_path, tiny_folder, monkeypatch, capsys):
    not_a_folder = tmp_path / "home"
    not_a_folder.write_text("")
    monkeypatch.setenv("VIVACE_HOME", str(not_a_folder))
    err = error_of(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "a"), *TINY], capsys)
    assert f"cannot write to the presize cache {not_a_folder / 'cache'}: {not_a_folder} is a file" in err
    assert "VIVACE_HOME" in err
    home = tmp_path / "ro_home"
    home.mkdir()
    monkeypatch.setenv("VIVACE_HOME", str(home))
    deny_writes_to(monkeypatch, home)
    err = error_of(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "b"), *TINY], capsys)
    assert f"parent {home} is read-only" in err and "VIVACE_HOME" in err


def fake_run(folder):
    folder.mkdir()
    for name in RUN_RECORDS:
        (folder / name).write_text("old")
    return folder


def test_a_finished_run_is_not_replaced_without_overwrite(tmp_path, tiny_folder, capsys):
    out = fake_run(tmp_path / "run")
    err = error_of(["train", "--data", str(tiny_folder), "--out", str(out), *TINY], capsys)
    assert f"--out {out} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert all((out / name).read_text() == "old" for name in RUN_RECORDS)


def test_overwrite_replaces_the_old_run(tmp_path, tiny_folder, capsys):
    out = fake_run(tmp_path / "run")
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), "--overwrite", *TINY]) == 0
    assert all((out / name).read_text(errors="replace") != "old" for name in RUN_RECORDS)
    # Not saved: `--resume` of this run continues it, it does not replace it again.
    assert "overwrite" not in json.loads((out / "config.json").read_text())


def test_empty_or_unrelated_folders_are_fine(tmp_path, tiny_folder):
    recipe = Recipe(data=str(tiny_folder))
    check_before_start(recipe, tmp_path)  # empty
    (tmp_path / "notes.txt").write_text("mine")
    check_before_start(recipe, tmp_path)  # no run records in it


def test_several_runs_check_their_subfolders(tmp_path, tiny_folder):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "last.safetensors").write_text("old")
    with pytest.raises(ValueError, match="run1/last.safetensors"):
        check_before_start(Recipe(data=str(tiny_folder)), tmp_path, runs=2)


def test_the_default_run_folder_under_torchrun_is_the_jobs(monkeypatch):
    """Every rank, and every restart of the job, names the same folder: torchrun's job id."""
    from vivace.runs import default_out
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "a1b2")
    assert default_out() == Path("runs") / "torchrun-a1b2"
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: a timestamp, as before
    assert default_out().name[:8].isdigit()
