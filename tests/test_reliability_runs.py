"""Issue #37, run folders: one writer at a time, resumes that say what changed, checkpoints checked
against the run, settings and environment variables refused up front with their names."""
import fcntl
import json
import shutil
import sys

import pytest

from test_checkpoint import forge
from vivace.cli import main
from vivace.environment import env_choice, env_folder, env_int, env_seconds
from vivace.runs import LOCK_FILE, check_before_start
from vivace.recipe import Recipe

# The tests that resume with --epochs 2 change the epochs: said in a warning, checked in test_N52b.
pytestmark = pytest.mark.filterwarnings("ignore:resume of .* changes")

TINY = ["--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--epochs", "1",
        "--bs", "4", "--valid-bs", "8", "--workers", "1"]


def error_of(argv, capsys) -> str:
    """Run the CLI, expect a usage error (exit 2) and no traceback; return its error line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def files_of(folder):
    """Every file under `folder` but the lock with its bytes and mtime: what 'nothing rewritten' compares."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_folder):
    """A finished 1-epoch run (the issue's `s1`)."""
    out = tmp_path_factory.mktemp("finished") / "s1"
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), *TINY]) == 0
    return out


def copy_run(run, to):
    shutil.copytree(run, to)
    return to


def test_N04_resume_of_finished_run_is_refused_and_nothing_rewritten(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "n4")
    before = files_of(run)
    err = error_of(["train", "--out", str(run), "--resume"], capsys)
    assert f"{run} is finished (epoch 1 of 1 done" in err and "--epochs N (N > 1)" in err and "--overwrite" in err
    assert files_of(run) == before


def test_N04_checkpoint_position_past_the_recipes_epochs_is_refused(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "n4")
    forge(run / "last.safetensors", lambda state: state["position"].update(epoch=99))
    before = files_of(run)
    err = error_of(["train", "--out", str(run), "--resume"], capsys)
    assert f"{run / 'last.safetensors'}: checkpoint field position.epoch=99 is past the recipe's epochs=1" in err
    assert files_of(run) == before


def test_N02_checkpoint_position_past_an_epochs_batches_is_refused(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "n2")
    forge(run / "last.safetensors", lambda state: state["position"].update(batch=10**6))
    log = (run / "log.csv").read_text()
    err = error_of(["train", "--out", str(run), "--resume", "--epochs", "2"], capsys)
    assert "checkpoint field position.batch=1000000 is past the 6 batches of an epoch" in err
    assert (run / "log.csv").read_text() == log  # no epoch "trained"


def test_N03_checkpoint_without_a_field_names_it(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "n3")
    forge(run / "last.safetensors", lambda state: state.pop("data"))
    err = error_of(["train", "--out", str(run), "--resume", "--epochs", "2"], capsys)
    assert f"{run / 'last.safetensors'}: checkpoint field data is missing" in err


@pytest.mark.slow
def test_N05_resume_of_several_runs_reads_their_configs_and_keeps_the_finished_one(tmp_path, tiny_folder, capsys):
    out = tmp_path / "r18"
    assert main(["train", "--data", str(tiny_folder), "--out", str(out), "--runs", "2", *TINY]) == 0
    for record in [*(out / "run1").iterdir(), out / "summary.json"]:  # killed while training run1
        record.unlink()
    run0 = files_of(out / "run0")
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--runs", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'run0'} is finished: kept as it is" in printed
    assert files_of(out / "run0") == run0
    config = json.loads((out / "run1" / "config.json").read_text())
    assert config["data"] == str(tiny_folder) and config["seed"] == 43 and config["widen"] == 0.25
    assert len(json.loads((out / "summary.json").read_text())["runs"]) == 2
    assert main(["export", str(out / "run0"), "-o", str(tmp_path / "m.vivace")]) == 0


def test_N05_resume_without_runs_of_a_several_runs_folder_is_refused(tmp_path, capsys):
    (tmp_path / "r" / "run0").mkdir(parents=True)
    (tmp_path / "r" / "run0" / "config.json").write_text("{}")
    err = error_of(["train", "--out", str(tmp_path / "r"), "--resume"], capsys)
    assert "holds several runs (run0, run1, ...): pass --runs N" in err


def hold_lock(folder, pid: str):
    """Another process's lock on a run folder, as flock sees it: an open file description holding it."""
    f = open(folder / LOCK_FILE, "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.truncate(0)
    f.write(pid)
    f.flush()
    return f


def test_N24_a_run_folder_in_use_is_refused(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "cc2")
    before = files_of(run)
    holder = hold_lock(run, "4242")
    try:
        err = error_of(["train", "--out", str(run), "--resume", "--epochs", "2", "--bs", "3"], capsys)
    finally:
        holder.close()
    assert f"{run} is in use by another vivace process (pid 4242); wait for it or choose another --out" in err
    assert files_of(run) == before
    # Released at exit, failed or not: the folder can be locked again.
    assert "is finished" in error_of(["train", "--out", str(run), "--resume"], capsys)  # refused under the lock
    hold_lock(run, "1").close()


def test_N52b_resume_says_what_changed(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "n52")
    with pytest.warns(UserWarning) as said:  # the CLI prints it as one line, "vivace train: warning: ..."
        assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--bs", "3"]) == 0
    assert [str(w.message) for w in said] == [f"resume of {run} changes batch_size 4 -> 3, epochs 1 -> 2 "
                                              "(vs its config.json)"]
    assert json.loads((run / "config.json").read_text())["batch_size"] == 3  # what now ran


@pytest.fixture
def four_classes(tiny_folder, tmp_path):
    """The tiny folder with one more class."""
    data = shutil.copytree(tiny_folder, tmp_path / "four")
    for split in ("train", "val"):
        shutil.copytree(data / split / "red", data / split / "yellow")
    return data


def test_N48h_N51_resume_on_data_with_other_classes_says_which(finished, tmp_path, four_classes, capsys):
    run = copy_run(finished, tmp_path / "n48")
    err = error_of(["train", "--out", str(run), "--resume", "--epochs", "2", "--data", str(four_classes)], capsys)
    assert f"{run / 'last.safetensors'} was trained on 3 classes, the data now has 4 (new: yellow)" in err
    assert "size mismatch" not in err


def test_N52a_resume_with_another_arch_says_what_changed(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "n52a")
    before = files_of(run)
    err = error_of(["train", "--out", str(run), "--resume", "--epochs", "2", "--arch", "xresnet34"], capsys)
    assert "--resume cannot change the model (arch xresnet18 -> xresnet34)" in err
    assert files_of(run) == before
    # config.json edited by hand: the weights do not fit, said in one line instead of torch's dump.
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "widen": 0.5}))
    err = error_of(["train", "--out", str(run), "--resume", "--epochs", "2"], capsys)
    assert f"{run / 'last.safetensors'} does not fit the model this recipe builds (size mismatch for" in err
    assert len(err) < 400


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_N40_seed_out_of_range_is_refused_before_any_folder(seed, tmp_path, tiny_folder, capsys):
    out = tmp_path / "run"
    err = error_of(["train", "--data", str(tiny_folder), "--out", str(out), "--seed", seed, *TINY], capsys)
    assert f"seed={seed} must be in [0, 4294967295]" in err
    assert not out.exists()


def test_N40_seed_past_the_range_with_several_runs_is_refused(tmp_path, tiny_folder, capsys):
    err = error_of(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--seed", str(2**32 - 1),
                    "--runs", "2", *TINY], capsys)
    assert "seed=4294967295 with runs=2 needs seeds up to 4294967296" in err


def bad_data(*args, **kwargs):
    raise ValueError("data: every image is unreadable")  # any failure while the data is built


def test_N40_a_failure_before_training_leaves_no_config(tmp_path, tiny_folder, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(sys.modules["vivace.build"], "make_dataloaders", bad_data)
        error_of(["train", "--data", str(tiny_folder), "--out", str(out), *TINY], capsys)
    assert not (out / "config.json").exists() and not (out / "recipe.txt").exists()
    check_before_start(Recipe(data=str(tiny_folder)), out)  # the corrected rerun needs no --resume


@pytest.mark.parametrize("argv", [
    ["show", "batch", "--workers", "-2"],
    ["experiments", "chapter7", "--workers", "-2", "--data", "no-such-folder"],
    ["train", "--workers", "-2"],
    ["train", "--threads", "-3"],
])
def test_N40d_negative_workers_and_threads_are_refused(argv, tmp_path, tiny_folder, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = error_of(argv, capsys)
    assert "workers=-2 must be >= 0" in err or "threads=-3 must be >= 0" in err
    assert list(tmp_path.iterdir()) == []


def test_N44_blank_vivace_home_is_refused(tmp_path, tiny_folder, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIVACE_HOME", " ")
    err = error_of(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), *TINY], capsys)
    assert "environment variable VIVACE_HOME=' ' must be a folder path, not blank" in err
    assert not (tmp_path / " ").exists()


@pytest.mark.parametrize("env, named", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' must be an integer >= 1"),
    ({"WORLD_SIZE": "2", "RANK": "0", "VIVACE_DIST_TIMEOUT": "abc"},
     "VIVACE_DIST_TIMEOUT='abc' must be a finite number of seconds > 0"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' must be an integer >= 0"),
])
def test_N44b_N55_bad_environment_variables_are_named(env, named, tmp_path, tiny_folder, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    err = error_of(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), *TINY], capsys)
    assert f"environment variable {named}" in err


def test_environment_helpers(monkeypatch, tmp_path):
    monkeypatch.delenv("VIVACE_X", raising=False)
    assert env_int("VIVACE_X", 1, low=1) == 1 and env_seconds("VIVACE_X", 5.0) == 5.0
    monkeypatch.setenv("VIVACE_X", "3")
    assert env_int("VIVACE_X", 1, low=1) == 3 and env_seconds("VIVACE_X", 5.0) == 3.0
    for value in ("0", "inf", "-1", "nan"):
        monkeypatch.setenv("VIVACE_X", value)
        with pytest.raises(ValueError, match=f"environment variable VIVACE_X='{value}' must be"):
            env_seconds("VIVACE_X", 5.0)
    monkeypatch.setenv("VIVACE_X", "")  # empty: as if unset
    assert env_folder("VIVACE_X", tmp_path) == tmp_path and env_choice("VIVACE_X", ("a", "b"), "a") == "a"
    monkeypatch.setenv("VIVACE_X", " B ")
    assert env_choice("VIVACE_X", ("a", "b"), "a") == "b"
