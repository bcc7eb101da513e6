"""TensorBoard: the loss and lr of every step and each epoch's figures, read back from the event file."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import tiny_dataloaders

pytest.importorskip("tensorboard")  # the test extra installs it; a bare install may not
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vivace.cli import main
from vivace.learner import Learner
from vivace.models import create_model
from vivace.tracking import TensorBoardCallback

EPOCHS = 2


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in `log_dir`'s event files -> [(step, value), ...] in order."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tiny_fit(folder, cbs, epochs: int = EPOCHS, is_main: bool = True) -> Learner:
    dls = tiny_dataloaders(folder)
    learn = Learner(dls, create_model("xresnet18", n_out=len(dls.vocab), widen=0.25), cbs=cbs)
    learn.is_main = is_main  # as torchrun's other ranks see it
    learn.fit_one_cycle(epochs, 1e-2)
    return learn


def test_event_file_holds_loss_and_lr_per_step_and_each_epoch_figure(tiny_folder, tmp_path):
    learn = tiny_fit(tiny_folder, [TensorBoardCallback(tmp_path / "tb")])
    scalars = read_scalars(tmp_path / "tb")
    steps = EPOCHS * len(learn.dls.train)
    assert [s for s, _ in scalars["train/loss"]] == list(range(steps))
    assert [s for s, _ in scalars["train/lr"]] == list(range(steps))
    assert [v for _, v in scalars["train/lr"]] == pytest.approx(learn.recorder.lrs, rel=1e-6)
    assert max(v for _, v in scalars["train/lr"]) == pytest.approx(1e-2, rel=0.05)  # the one-cycle peak
    for name in ("train_loss", "valid_loss", "accuracy", "time"):
        points = scalars[f"epoch/{name}"]
        assert [s for s, _ in points] == list(range(EPOCHS)), name
        assert [v for _, v in points] == pytest.approx([row[name] for row in learn.recorder.rows], rel=1e-5)
    # The epoch's train_loss is the mean of its steps' losses, as the table prints it.
    first_epoch = [v for _, v in scalars["train/loss"][:len(learn.dls.train)]]
    assert sum(first_epoch) / len(first_epoch) == pytest.approx(scalars["epoch/train_loss"][0][1], rel=1e-5)


def test_a_second_fit_continues_the_curves(tiny_folder, tmp_path):
    learn = tiny_fit(tiny_folder, [TensorBoardCallback(tmp_path / "tb")], epochs=1)
    learn.fit_one_cycle(1, 1e-3)
    scalars = read_scalars(tmp_path / "tb")
    assert [s for s, _ in scalars["train/loss"]] == list(range(2 * len(learn.dls.train)))
    assert [s for s, _ in scalars["epoch/valid_loss"]] == [0, 1]


def test_only_rank_0_writes(tiny_folder, tmp_path):
    tiny_fit(tiny_folder, [TensorBoardCallback(tmp_path / "tb")], epochs=1, is_main=False)
    assert not (tmp_path / "tb").exists()


def test_missing_tensorboard_is_one_line_naming_the_extra(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    code = main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("vivace train: error: --tensorboard needs the tensorboard package: "
                   "pip install 'vivace[tensorboard]'\n")
    assert not (tmp_path / "run").exists()  # refused before any folder or cache was made
    with pytest.raises(RuntimeError, match=r"TensorBoardCallback needs the tensorboard package"):
        TensorBoardCallback(tmp_path / "tb")


def test_train_tensorboard_flag_writes_the_run(tiny_folder, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--size-px", "16", "--presize-px", "24", "--widen", "0.25", "--batch-size", "8",
                 "--workers", "1", "--tensorboard", str(tmp_path / "tb")])
    assert code == 0, capsys.readouterr().err
    scalars = read_scalars(tmp_path / "tb")
    assert len(scalars["train/loss"]) == len(scalars["train/lr"]) == 3  # 24 training images, batch 8
    assert [s for s, _ in scalars["epoch/accuracy"]] == [0]


def test_several_runs_write_to_a_subfolder_each():
    from vivace.recipe import TrainOptions
    from vivace.train import run_options
    assert run_options(TrainOptions(tensorboard="tb", runs=2), 1).tensorboard == str(Path("tb") / "run1")
    assert run_options(TrainOptions(runs=2), 1).tensorboard == ""


def test_train_help_shows_the_tensorboard_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--tensorboard" in capsys.readouterr().out
