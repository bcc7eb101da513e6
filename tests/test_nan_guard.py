"""The divergence guard: NaN and exploding losses stop the fit with one clear message, no per-batch sync."""
import math
import re
import sys
from collections import Counter
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vivace.callbacks import Callback
from vivace.guards import CHECK_EVERY
from vivace.checkpoint import CheckpointSaver, load_checkpoint
from vivace.learner import Learner, TrainingFailed
from vivace.losses import LabelSmoothingCrossEntropy
from vivace.techniques import Mixup

from conftest import tiny_model

# Tensor methods that copy a value to the host: on a GPU each waits for the device to catch up.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")
AUGMENT_SOURCE = "vivace/augment.py"


class NaNInputAt(Callback):
    """Turns the training batch at (epoch, batch) into NaNs."""

    def __init__(self, epoch: int, batch: int):
        self.at = (epoch, batch)

    def transform_batch(self, learn, x, y):
        return (x * float("nan") if (learn.state.epoch, learn.state.iter) == self.at else x), y


class BatchCounter(Callback):
    order = 100

    def __init__(self):
        self.seen = 0

    def after_batch(self, learn):
        self.seen += 1


def test_nan_at_batch_k_is_caught_within_check_every(tiny_dls, tmp_path):
    counter = BatchCounter()
    learn = Learner(tiny_dls, tiny_model(), cbs=[NaNInputAt(1, 1), counter, CheckpointSaver(tmp_path)])
    learn.guard.check_every = 4  # tiny_dls has 6 batches an epoch: looks after batches 3 and 5
    with pytest.raises(TrainingFailed, match=r"loss became nan in epoch 1, batches 0-3; lower the learning rate"):
        learn.fit(3, 1e-2)
    assert (learn.state.epoch, learn.state.iter) == (1, 3) and counter.seen == 6 + 4  # stopped at the first look after it
    assert len(learn.recorder.rows) == 1  # the failed epoch never got a row
    kept = load_checkpoint(tmp_path / "last.safetensors")
    assert kept["position"] == {"epoch": 1, "batch": 0}
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


def test_mid_epoch_checkpoints_skip_a_nan_the_guard_has_not_looked_at_yet(tiny_dls, tmp_path):
    saver = CheckpointSaver(tmp_path, checkpoint_every_min=1e-9)  # would save after every batch
    learn = Learner(tiny_dls, tiny_model(), cbs=[NaNInputAt(0, 2), saver])
    with pytest.raises(TrainingFailed, match="epoch 0, batches 0-5"):
        learn.fit(1, 1e-2)
    kept = load_checkpoint(tmp_path / "last.safetensors")
    assert kept["position"] == {"epoch": 0, "batch": 2}  # saved after batch 1, the last finite one
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


class LossPlus(nn.Module):
    """Cross-entropy plus `extra` once `start_calls` calls have passed: an exploded but finite loss
    whose gradients are untouched."""

    def __init__(self, start_calls: int, extra: float = 100.0):
        super().__init__()
        self.start_calls, self.extra, self.calls = start_calls, extra, 0

    def forward(self, logits, target):
        self.calls += 1
        return F.cross_entropy(logits, target) + (self.extra if self.calls > self.start_calls else 0.0)


def test_exploding_finite_loss_stops_naming_its_start(tiny_dls):
    losses = []

    class LossLog(Callback):
        def after_batch(self, learn):
            losses.append(learn.state.loss.item())

    explode_in_epoch_1 = LossPlus(start_calls=6 + 1)  # 6 training batches + 1 validation call
    learn = Learner(tiny_dls, tiny_model(), loss_func=explode_in_epoch_1, cbs=[LossLog()])
    with pytest.raises(TrainingFailed) as err:
        learn.fit(3, 1e-2)
    message = str(err.value)
    assert message.startswith("the training loss exploded to 10") and "in epoch 1, batches 0-5" in message
    start = max(losses[0], math.log(3))  # the first batch's loss, or a uniform guess's if lower
    assert f"over 10x its start ({start:.3g})" in message
    assert len(learn.recorder.rows) == 1


def test_label_smoothing_and_mixup_do_not_trip_the_guard(tiny_dls):
    learn = Learner(tiny_dls, tiny_model(), loss_func=LabelSmoothingCrossEntropy(0.3), cbs=[Mixup(1.0, seed=0)])
    learn.fit_one_cycle(3, 5e-2)
    assert learn.state.failure is None and len(learn.recorder.rows) == 3


@pytest.mark.parametrize("lr, advice", [
    (0.0, "the learning rate is 0, so check the inputs, the model and the loss"),
    (float("nan"), "the learning rate is nan: give a finite, positive one"),
])
def test_advice_fits_a_zero_or_non_finite_learning_rate(tiny_dls, lr, advice):
    learn = Learner(tiny_dls, tiny_model(), cbs=[NaNInputAt(0, 0)])
    with pytest.raises(TrainingFailed, match=advice) as err:
        learn.fit(1, lr)
    assert "--lr nan" not in str(err.value) and "--lr 0" not in str(err.value)


def test_non_finite_validation_stops_the_fit(tiny_dls):
    class NaNWeightsBeforeValidation(Callback):
        def after_batch(self, learn):
            if learn.state.iter + 1 == learn.state.n_batches:  # after the guard's last look at the training loss
                with torch.no_grad():
                    learn.model[-1].bias.fill_(float("inf"))

    learn = Learner(tiny_dls, tiny_model(), cbs=[NaNWeightsBeforeValidation()])
    with pytest.raises(TrainingFailed, match="the validation loss is nan after epoch 0: the model's outputs"):
        learn.fit(2, 1e-2)


def test_no_host_sync_per_batch(tiny_folder):
    """Host reads inside the batch loop: only the guard's look every check_every batches."""
    from vivace.data import make_dataloaders

    dls = make_dataloaders(tiny_folder, size_px=16, presize_px=24, batch_size=1, valid_batch_size=8, seed=0, device="cpu",
                           workers=1, progress=False)  # 24 batches an epoch
    reads, inside = Counter(), []

    class OpenBatch(Callback):
        order = -100

        def before_batch(self, learn):
            inside.append(True)

    class CloseBatch(Callback):
        order = 100

        def after_batch(self, learn):
            inside.clear()

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            # The step's augmentation draws its crop/flip/warp parameters on the CPU by design (one
            # small copy to the device per batch): reading those never waits for the device.
            if inside and not sys._getframe(1).f_code.co_filename.endswith(AUGMENT_SOURCE):
                reads[name] += 1
            return original(self, *args, **kwargs)
        return read

    learn = Learner(dls, tiny_model(), cbs=[OpenBatch(), CloseBatch()])
    learn.guard.check_every = 8
    with mock.patch.multiple(torch.Tensor, **{name: counted(name) for name in HOST_READS}):
        learn.fit(2, 1e-2)
    n_batches, looks_per_epoch = 2 * len(dls.train), len(dls.train) // 8
    assert n_batches == 48 and sum(reads.values()) == 2 * looks_per_epoch  # one read per look
    assert sum(reads.values()) <= n_batches / 8 + 2
    assert CHECK_EVERY >= 16  # the default looks far more rarely still


def test_cli_run_that_diverges_exits_non_zero_with_one_line(tmp_path, tiny_folder, capsys):
    from vivace.cli import main

    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_folder), "--out", str(out), "--arch", "xresnet18", "--widen", "0.25",
            "--size", "16", "--presize", "24", "--epochs", "2", "--bs", "4", "--valid-bs", "8", "--workers", "1",
            "--lr", "10", "--pct-start", "0"]  # the peak LR from the first batch: the loss explodes
    assert main(argv) == 1
    printed = capsys.readouterr()
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vivace train: error: the training loss")
    assert "try --lr 1" in lines[0] and lines[0].endswith("no checkpoint was written")
    assert "error:" not in printed.out  # printed once, on stderr
    assert not (out / "summary.json").exists() and not (out / "report.html").exists()


def test_failed_run_names_its_kept_checkpoint_and_writes_no_summary(tmp_path, tiny_folder):
    from vivace.recipe import TrainOptions, make_recipe
    from vivace.train import train

    out = tmp_path / "run"
    recipe = make_recipe(data=str(tiny_folder), arch="xresnet18", widen=0.25, size=16, presize=24,
                         epochs=3, bs=4, valid_bs=8)
    kept = f"the last good checkpoint is kept: {out / 'last.safetensors'}"
    with pytest.raises(TrainingFailed, match=f"in epoch 1, .*; {re.escape(kept)}"):
        train(recipe, TrainOptions(workers=1, out=str(out)), cbs=[NaNInputAt(1, 1)])
    assert load_checkpoint(out / "last.safetensors")["position"] == {"epoch": 1, "batch": 0}
    assert (out / "log.csv").is_file() and not (out / "summary.json").exists()
