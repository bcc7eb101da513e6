"""Progressive resizing: in-fit ramp (ProgressiveResize) and the book's swap of `learn.dls`."""
import pytest
import torch
from torch import nn

from vivace import schedule as sched
from vivace.callbacks import Callback, ProgressiveResize
from vivace.data import make_dataloaders
from vivace.learner import Learner
from vivace.schedule import SizeSchedule


class Spy(Callback):
    """Records, per training batch, the step's size and the batch's real shape."""

    def __init__(self):
        self.sizes, self.shapes, self.batch_sizes = [], [], []

    def transform_batch(self, learn, x, y):
        self.sizes.append(learn.state.size)
        self.shapes.append(x.shape[-1])
        self.batch_sizes.append(x.shape[0])
        return x, y


class EvalSizes(nn.Module):
    """Tiny fully convolutional model recording its input size in eval (validation) mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
        self.eval_sizes = []

    def forward(self, x):
        if not self.training:
            self.eval_sizes.append(x.shape[-1])
        return self.body(x)


def dls_at(folder, size, presize=32):
    return make_dataloaders(folder, size=size, presize=presize, bs=4, valid_bs=8, seed=0, device="cpu",
                            workers=1, progress=False)


SCHEDULE = SizeSchedule(32, start_frac=0.5, ramp_end=0.75, multiple=8)


def test_sizes_at_known_steps_lr_unbroken_and_validation_final(tiny_folder):
    dls = dls_at(tiny_folder, 32)  # 24 training images, bs 4: 6 batches per epoch
    spy, model = Spy(), EvalSizes()
    learn = Learner(dls, model, cbs=[ProgressiveResize(SCHEDULE), spy])
    learn.fit_one_cycle(2, 1e-2, pct_start=0.25)
    # batch k of 12 is cropped at SCHEDULE(k / 12): 16 + 16 * min((k / 12) / 0.75, 1), snapped to 8
    assert spy.shapes == [16, 16, 16, 24, 24, 24, 24, 32, 32, 32, 32, 32]
    assert spy.sizes == spy.shapes
    lr = sched.one_cycle(1e-2, pct_start=0.25)
    assert learn.recorder.lrs == pytest.approx([lr(k / 12) for k in range(12)])  # one schedule, no restarts
    assert set(model.eval_sizes) == {32}  # validation stays at the final size
    assert dls.train.size == 32


def test_batch_size_scales_with_size_and_is_restored(tiny_folder):
    dls = dls_at(tiny_folder, 32)
    spy = Spy()
    learn = Learner(dls, EvalSizes(), cbs=[ProgressiveResize(SCHEDULE, scale_batch=True), spy])
    learn.fit_one_cycle(2, 1e-2)
    # epoch 0 starts at 16 px: bs 4 * (32/16)^2 = 16 -> one batch of 24 images (drop_last)
    # epoch 1 starts at 24 px: bs int(4 * (32/24)^2) = 7 -> three batches; the size still ramps inside
    assert spy.batch_sizes == [16, 7, 7, 7]
    assert spy.shapes == [16, 24, 32, 32]
    assert dls.train.batch_size == 4 and dls.train.size == 32


def test_the_books_way_swaps_the_learners_data(tiny_folder):
    small, full = dls_at(tiny_folder, 8), dls_at(tiny_folder, 16)
    spy, model = Spy(), EvalSizes()
    learn = Learner(small, model, cbs=[spy])
    learn.fit_one_cycle(1, 1e-2)
    learn.dls = full  # the book: learn.dls = get_dls(64, 224); learn.fine_tune(5, 1e-3)
    learn.fine_tune(1, 1e-2, freeze_epochs=0)
    assert spy.shapes == [8] * 6 + [16] * 6
    assert model.eval_sizes[0] == 8 and model.eval_sizes[-1] == 16
    assert len(learn.recorder.rows) == 2 and learn.state.last_metrics["valid_loss"] == pytest.approx(
        learn.validate()["valid_loss"])
