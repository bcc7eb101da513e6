"""Progressive resizing: in-fit ramp (ProgressiveResize) and the book's swap of `learn.dls`."""
import pytest

from vivace import schedule as sched
from vivace.callbacks import Callback
from vivace.learner import Learner
from vivace.schedule import SizeSchedule
from vivace.techniques import ProgressiveResize

from conftest import SizeSpy, tiny_dataloaders


class Spy(Callback):
    """Records, per training batch, the step's size and the batch's real shape."""

    def __init__(self):
        self.sizes, self.shapes = [], []

    def transform_batch(self, learn, x, y):
        self.sizes.append(learn.state.size)
        self.shapes.append(x.shape[-1])
        return x, y


def dls_at(folder, size, presize=32):
    return tiny_dataloaders(folder, size_px=size, presize_px=presize)


SCHEDULE = SizeSchedule(32, start_frac=0.5, ramp_end=0.75, multiple=8)


def test_sizes_at_known_steps_lr_unbroken_and_validation_final(tiny_folder):
    dls = dls_at(tiny_folder, 32)  # 24 training images, bs 4: 6 batches per epoch
    spy, model = Spy(), SizeSpy()
    learn = Learner(dls, model, cbs=[ProgressiveResize(SCHEDULE), spy])
    learn.fit_one_cycle(2, 1e-2, pct_start=0.25)
    # batch k of 12 is cropped at SCHEDULE(k / 12): 16 + 16 * min((k / 12) / 0.75, 1), snapped to 8
    assert spy.shapes == [16, 16, 16, 24, 24, 24, 24, 32, 32, 32, 32, 32]
    assert spy.sizes == spy.shapes
    lr = sched.one_cycle(1e-2, pct_start=0.25)
    assert learn.recorder.lrs == pytest.approx([lr(k / 12) for k in range(12)])  # one schedule, no restarts
    assert set(model.sizes) == {32}  # validation stays at the final size
    assert dls.train.size == 32


def test_the_books_way_swaps_the_learners_data(tiny_folder):
    small, full = dls_at(tiny_folder, 8), dls_at(tiny_folder, 16)
    spy, model = Spy(), SizeSpy()
    learn = Learner(small, model, cbs=[spy])
    learn.fit_one_cycle(1, 1e-2)
    learn.dls = full  # the book: learn.dls = get_dls(64, 224); learn.fine_tune(5, 1e-3)
    learn.fine_tune(1, 1e-2, freeze_epochs=0)
    assert spy.shapes == [8] * 6 + [16] * 6
    assert model.sizes[0] == 8 and model.sizes[-1] == 16
    assert len(learn.recorder.rows) == 2 and learn.state.last_metrics["valid_loss"] == pytest.approx(
        learn.validate()["valid_loss"])
