
import pytest
import torch
from torch import nn

from vivace.callbacks import Callback
from vivace.guards import StopAfter
from vivace.learner import Learner, TrainingFailed
from vivace.lr_finder import lr_find
from vivace.metrics import accuracy

from conftest import tiny_model


class EventLog(Callback):
    def __init__(self):
        self.events = []

    def before_fit(self, learn):
        self.events.append("before_fit")

    def before_epoch(self, learn):
        self.events.append("before_epoch")

    def before_batch(self, learn):
        self.events.append("before_batch")

    def after_batch(self, learn):
        self.events.append("after_batch")

    def after_validate(self, learn):
        self.events.append("after_validate")

    def after_epoch(self, learn):
        self.events.append("after_epoch")

    def after_fit(self, learn):
        self.events.append("after_fit")


def test_events_fire_in_order(tiny_dls):
    log = EventLog()
    learn = Learner(tiny_dls, tiny_model(), cbs=[log])
    learn.fit(2, 1e-2)
    n = len(tiny_dls.train)
    epoch = ["before_epoch"] + ["before_batch", "after_batch"] * n + ["after_validate", "after_epoch"]
    assert log.events == ["before_fit"] + epoch * 2 + ["after_fit"]


def test_batch_hook_changes_the_batch(tiny_dls):
    seen = []

    class ZeroInputs(Callback):
        def transform_batch(self, learn, x, y):
            return torch.zeros_like(x), y

    class Spy(Callback):
        def after_batch(self, learn):
            seen.append(learn.state.loss.item())

    model = tiny_model()
    learn = Learner(tiny_dls, model, cbs=[ZeroInputs(), Spy()])
    inputs = []
    model.register_forward_pre_hook(lambda m, args: inputs.append(args[0].abs().sum().item()) if m.training else None)
    learn.fit(1, 1e-2)
    assert inputs and all(v == 0 for v in inputs)


def test_callback_can_stop_the_fit(tiny_dls):
    log = EventLog()
    learn = Learner(tiny_dls, tiny_model(), cbs=[StopAfter(2), log])
    learn.fit(3, 1e-2)
    assert log.events.count("after_batch") == 2
    assert "after_validate" not in log.events and log.events[-1] == "after_fit"


def test_learner_trains_and_reports(tiny_dls, capsys):
    learn = Learner(tiny_dls, tiny_model(), metrics=accuracy)
    learn.fit_one_cycle(4, 5e-2)
    out = capsys.readouterr().out
    assert "train_loss" in out and "valid_loss" in out and "accuracy" in out
    rows = learn.recorder.rows
    assert len(rows) == 4 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["accuracy"] == pytest.approx(learn.validate()["accuracy"])  # the table's row is the model's


def test_a_fit_changes_only_the_state_and_the_optimizer(tiny_dls):
    """Where the fit is lives in `learn.state`; the loop adds no attribute to the Learner."""
    learn = Learner(tiny_dls, tiny_model(), metrics=accuracy)
    before = dict(vars(learn))
    learn.fit_one_cycle(2, 1e-2)
    changed = {name for name, value in vars(learn).items() if before.get(name, object()) is not value}
    assert set(vars(learn)) == set(before) and changed == {"opt", "state"}
    state = learn.state
    assert (state.epoch, state.n_epochs, state.iter + 1) == (1, 2, state.n_batches)
    assert state.size == tiny_dls.train.size and not state.training and state.failure is None
    assert set(state.last_metrics) == {"valid_loss", "accuracy"}


def test_bf16_autocast_trains_on_cpu_with_fp32_weights(tiny_dls):
    learn = Learner(tiny_dls, tiny_model(), amp="bf16")
    assert learn.amp_dtype is torch.bfloat16
    with learn.autocast():
        x, _ = next(iter(tiny_dls.train))
        assert learn.model(x).dtype == torch.bfloat16  # the convolutions really ran in bf16
    learn.fit_one_cycle(4, 5e-2)
    rows = learn.recorder.rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())  # master weights stay fp32
    preds, _ = learn.get_preds()
    assert preds.dtype == torch.float32 and torch.isfinite(preds).all()


def test_same_seed_same_losses(tiny_dls, tiny_folder):
    from vivace.data import make_dataloaders

    def run():
        dls = make_dataloaders(tiny_folder, size_px=16, presize_px=24, batch_size=4, seed=3, device="cpu", workers=1, progress=False)
        learn = Learner(dls, tiny_model())
        learn.fit(2, 1e-2)
        return [r["train_loss"] for r in learn.recorder.rows]

    assert run() == run()


def test_nan_guard_stops_and_names_where(tiny_dls, capsys):
    class Explode(Callback):
        def transform_batch(self, learn, x, y):
            return x * float("nan") if learn.state.iter == 1 else x, y

    learn = Learner(tiny_dls, tiny_model(), cbs=[Explode()])
    with pytest.raises(TrainingFailed) as err:
        learn.fit(2, 1e-2)
    assert str(err.value) == learn.state.failure
    assert "epoch 0, batches 0-5" in learn.state.failure and "learning rate" in learn.state.failure
    assert learn.recorder.rows == []
    assert "error" not in capsys.readouterr().out  # the message is the exception's, printed once by its catcher


def test_schedule_reaches_optimizer(tiny_dls):
    lrs = []

    class LRSpy(Callback):
        def after_batch(self, learn):
            lrs.append(learn.opt.param_groups[0]["lr"])

    learn = Learner(tiny_dls, tiny_model(), cbs=[LRSpy()])
    learn.fit_one_cycle(2, 1.0, pct_start=0.5)
    assert lrs[0] == pytest.approx(1 / 25)
    assert max(lrs) <= 1.0 and lrs[-1] < 0.1


@pytest.mark.parametrize("opt,key", [("ranger", "betas"), ("sgd", "momentum"), ("adamw", "betas")])
def test_mom_reaches_the_optimizer_and_flat_cos_keeps_it(tiny_dls, opt, key):
    learn = Learner(tiny_dls, tiny_model(), optimizer=opt, momentum=0.95, cbs=[StopAfter(2)])
    learn.fit_flat_cos(1, 1e-3)
    value = learn.opt.param_groups[0][key]
    assert (value[0] if key == "betas" else value) == pytest.approx(0.95)


def test_lr_find_suggests_and_restores(tiny_dls, tmp_path):
    model = tiny_model()
    learn = Learner(tiny_dls, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_find(learn, num_it=20)
    assert 1e-7 <= result.suggestion <= 10 and len(result.lrs) == len(result.losses) <= 20
    assert result.lrs == sorted(result.lrs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    result.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_ema_averages_weights_and_becomes_the_model(tiny_dls):
    from vivace.techniques import EMA

    model = tiny_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA(decay=0.5)
    learn = Learner(tiny_dls, model, cbs=[ema])
    learn.fit(1, 1e-1)
    assert learn.eval_model is learn.model
    final = model.state_dict()
    assert all(torch.equal(final[k], ema.average.model.state_dict()[k]) for k in final)
    assert learn.ema is None  # the step stops averaging once the fit is over
    assert any(not torch.equal(final[k], start[k]) for k in final)
    with pytest.raises(ValueError, match="decay"):
        EMA(1.5)


def test_ema_update_rule():
    from types import SimpleNamespace

    from vivace.techniques import EMA

    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    learn = SimpleNamespace(model=model, eval_model=model, ema=None)
    ema = EMA(decay=0.75)
    ema.before_fit(learn)
    assert learn.eval_model is ema.average.model and learn.ema is ema.average  # the step updates it
    with torch.no_grad():
        model.weight.fill_(1.0)
    learn.ema.update(model)
    learn.ema.update(model)
    assert ema.average.model.weight.item() == pytest.approx(1 - 0.75 ** 2)  # 0 -> 0.25 -> 0.4375


def test_ema_half_life_weighs_each_step_by_its_share_of_the_fit():
    from types import SimpleNamespace

    from vivace.techniques import EMA, technique_callbacks

    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    learn = SimpleNamespace(model=model, eval_model=model, ema=None, state=SimpleNamespace(progress=0.0))
    ema = EMA(half_life=0.25)
    ema.before_fit(learn)
    with torch.no_grad():
        model.weight.fill_(1.0)
    decays = []
    # Steps that advance the fit by 0.25, then two of 0.125: a step's weight follows its share, not
    # the count of steps (under a budget the progress is the time's, so uneven steps are the rule).
    for progress in (0.0, 0.25, 0.375, 0.5):
        learn.state.progress = progress
        ema.before_batch(learn)
        decays.append(ema.average.decay)
        learn.ema.update(model)
    assert decays == pytest.approx([1.0, 0.5, 0.5 ** 0.5, 0.5 ** 0.5])  # the first step moves nothing
    assert ema.average.model.weight.item() == pytest.approx(1 - 0.5 ** 2)  # half a life per 0.25 of the fit
    with pytest.raises(ValueError, match="half_life"):
        EMA(half_life=1.5)
    with pytest.raises(ValueError, match="give one of them"):
        technique_callbacks(ema_decay=0.99, ema_half_life=0.1, size_px=64)
    assert [cb.half_life for cb in technique_callbacks(ema_half_life=0.1, size_px=64)] == [0.1]


@pytest.mark.parametrize("valid_every, validated", [(0, [False, False, True]), (2, [False, True, True])])
def test_valid_every_skips_validation_but_never_the_last_epoch(tiny_dls, tmp_path, valid_every, validated):
    import math
    from vivace.guards import EarlyStopping
    from vivace.checkpoint import CheckpointSaver
    learn = Learner(tiny_dls, tiny_model(), cbs=[CheckpointSaver(tmp_path, "accuracy"), EarlyStopping(patience=1)])
    learn.valid_every = valid_every
    calls = []
    learn.validate = lambda dl=None: calls.append(learn.state.epoch) or {"valid_loss": 1.0, "accuracy": 0.5}
    learn.fit(3, 1e-3)
    assert calls == [e for e, v in enumerate(validated) if v]
    rows = learn.recorder.rows
    assert len(rows) == 3  # a row (train loss, time) every epoch
    assert [not math.isnan(r["valid_loss"]) for r in rows] == validated
    assert learn.state.last_metrics == {"valid_loss": 1.0, "accuracy": 0.5}
    assert (tmp_path / "best.safetensors").is_file()  # best tracks only validated epochs
