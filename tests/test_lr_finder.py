"""LR finder: fastai's suggestion rules on curves with known answers, the sweep, and `vivace lr-find`."""
from __future__ import annotations

import math
import re
import types

import numpy as np
import pytest
import torch

from vivace import lr_finder
from vivace.callbacks import Callback
from vivace.cli import main
from vivace.learner import FitState, Learner
from vivace.models import create_model

STEP = 8 / 99  # decades between points of a 100-point sweep from 1e-7 to 10


def flat_fall_diverge() -> tuple[list[float], list[float]]:
    """Flat at 2.0 below 1e-3, falling to 0.5 at 1e-1 (fastest at 1e-2), then diverging."""
    xs = np.linspace(-7, 1, 100)  # log10(lr)
    losses = np.where(xs < -3, 2.0, 1.25 + 0.75 * np.cos(np.pi * (xs + 3) / 2))
    losses = np.where(xs > -1, 0.5 + 10 * (xs + 1) ** 2, losses)
    return list(10.0 ** xs), list(losses)


def test_valley_lands_inside_the_fall():
    lrs, losses = flat_fall_diverge()
    assert 1e-3 < lr_finder.valley(lrs, losses) < 1e-1


def test_valley_follows_fastais_arithmetic():
    lrs = [10.0 ** (i - 7) for i in range(10)]
    losses = [3.0, 3.1, 2.9, 2.5, 2.0, 1.5, 1.0, 0.8, 2.0, 5.0]
    # The longest fall ends at 7 with 7 points (3.0, 2.9, ..., 0.8); fastai takes start = 7 - 7 = 0
    # and index start + int(7 / 3) + int(7 / 6) = 3.
    assert lr_finder.valley(lrs, losses) == lrs[3]


def test_steep_is_where_the_loss_falls_fastest():
    lrs, losses = flat_fall_diverge()
    assert abs(math.log10(lr_finder.steep(lrs, losses)) - -2) <= STEP


def test_minimum_is_a_tenth_of_the_rate_at_the_lowest_loss():
    lrs, losses = flat_fall_diverge()
    assert lr_finder.minimum(lrs, losses) == pytest.approx(lrs[int(np.argmin(losses))] / 10)
    assert abs(math.log10(lr_finder.minimum(lrs, losses)) - -2) <= STEP  # the lowest loss is at 1e-1


def test_suggest_trims_as_fastai_and_stops_at_nan():
    lrs, losses = flat_fall_diverge()
    losses[80] = math.nan
    result = lr_finder.suggest(lrs, losses, num_it=100)
    assert result.suggestion == result.valley == lr_finder.valley(lrs[10:80], losses[10:80])
    assert result.steep == lr_finder.steep(lrs[10:80], losses[10:80])
    with pytest.raises(ValueError, match="too few"):
        lr_finder.suggest([1e-3, 1e-2], [1.0, math.nan], num_it=2)


# -- the recorder: fastai's smoothing and stop ----------------------------------------------
def feed(recorder: lr_finder.LRRecorder, losses: list[float]) -> int:
    """Feed raw losses until the recorder asks to stop; the number fed."""
    learn = types.SimpleNamespace(state=FitState(lr=1e-3), stop=False)
    learn.request_stop = lambda: setattr(learn, "stop", True)
    for n, loss in enumerate(losses, 1):
        learn.state.loss = torch.tensor(loss)
        recorder.after_batch(learn)
        if learn.stop:
            return n
    return len(losses)


def test_smoothing_is_debiased_and_divergence_stops_the_sweep():
    recorder = lr_finder.LRRecorder(num_it=100)
    n = feed(recorder, [1.0] * 5 + [1000.0] * 5)
    assert recorder.losses[:5] == pytest.approx([1.0] * 5)  # debiased: no pull towards 0 at the start
    assert n == 6 and recorder.losses[-1] > 4 * min(recorder.losses)
    assert feed(lr_finder.LRRecorder(num_it=100), [1.0, math.nan, 1.0]) == 2
    assert feed(lr_finder.LRRecorder(num_it=3), [1.0] * 10) == 3


# -- the sweep leaves the learner as it was ------------------------------------------------------
def tiny_learner(dls) -> Learner:
    torch.manual_seed(0)
    return Learner(dls, create_model("xresnet18", n_out=len(dls.vocab), widen=0.25))


def test_lr_find_restores_weights_optimizer_and_loop_state(tiny_dls):
    learn = tiny_learner(tiny_dls)
    learn.fit(1, 1e-2)
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt, cbs, rows = learn.opt, list(learn.cbs), list(learn.recorder.rows)
    opt_state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state_dict()["state"].items()}
    result = lr_finder.lr_find(learn, num_it=10)
    assert len(result.lrs) == len(result.losses) <= 10 and result.lrs == sorted(result.lrs)
    assert all(torch.equal(weights[k], v) for k, v in learn.model.state_dict().items())
    assert learn.opt is opt and learn.cbs == cbs and learn.recorder.rows == rows and learn.state.n_epochs == 1
    assert all(torch.equal(opt_state[k][n], t) for k, v in opt.state_dict()["state"].items() for n, t in v.items())
    assert all(math.isfinite(x) for x in (result.valley, result.steep, result.minimum))


def test_lr_find_restores_the_learner_when_the_sweep_fails(tiny_dls):
    class FailsOnThirdBatch(Callback):
        def __init__(self):
            self.seen = 0

        def transform_batch(self, learn, x, y):
            self.seen += 1
            if self.seen == 3:
                raise RuntimeError("batch source failed")
            return x, y

    learn = tiny_learner(tiny_dls)
    learn.add_cbs(FailsOnThirdBatch())
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    cbs = list(learn.cbs)
    with pytest.raises(RuntimeError, match="batch source failed"):
        lr_finder.lr_find(learn, num_it=10)
    assert all(torch.equal(weights[k], v) for k, v in learn.model.state_dict().items())
    assert learn.cbs == cbs and learn.opt is None


# -- vivace lr-find --------------------------------------------------------------------------------
def test_cli_prints_the_three_suggestions_and_writes_the_plot(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["lr-find", "--data", str(tiny_folder), "--arch", "xresnet18", "--widen", "0.25", "--size", "16",
            "--presize", "24", "--bs", "4", "--workers", "1", "--num-it", "12"]
    assert main(args) == 0
    out = capsys.readouterr().out
    found = dict(re.findall(r"^(valley|steep|minimum)\s+(\S+)", out, flags=re.M))
    assert set(found) == {"valley", "steep", "minimum"} and all(0 < float(v) < 10 for v in found.values())
    assert "suggested" in out and (tmp_path / "lr_find.png").stat().st_size > 0
    assert main([*args, "--num-it", "6"]) == 0  # a second default plot does not overwrite the first
    assert (tmp_path / "lr_find-2.png").is_file()


def test_cli_takes_no_run_directory(tiny_folder, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["lr-find", "--data", str(tiny_folder), "--out", "somewhere"])
    assert exit_.value.code == 2 and "unrecognized arguments: --out somewhere" in capsys.readouterr().err
