"""Training to a wall-clock deadline (`--budget`): the duration flag, the clock, and budgeted runs
that end on time with their schedule complete, resume with what is left, and stop together under
torchrun."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vivace import budget as budget_module
from vivace.budget import Budget, BudgetClock, format_duration, parse_duration
from vivace.callbacks import Callback
from vivace.checkpoint import position_in_run
from vivace.cli import main
from vivace.learner import Learner
from vivace.recipe import TrainOptions, make_recipe
from vivace.techniques import EMA
from vivace.train import TrainingInterrupted, train

from conftest import tiny_dataloaders, tiny_model


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400),
                                           ("2.5m", 150), ("45", 45), (" 1M 5s ", 65), (12.5, 12.5)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "m10", "1h-5m", "", "-5m", "10 minutes"])
def test_a_wrong_duration_says_how_to_write_one(text):
    with pytest.raises(ValueError, match="write it as 90s, 10m, 1h or 1h30m"):
        parse_duration(text)


def test_durations_print_as_clock_times():
    assert [format_duration(s) for s in (0, 59.6, 600, 3723, -3)] == ["0:00", "1:00", "10:00", "1:02:03", "0:00"]


def test_the_budget_flag_takes_a_duration_and_a_wrong_one_is_one_line(capsys):
    assert main(["train", "--budget", "1m30s", "--print-recipe"]) == 0
    assert "budget_s" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--budget", "ten minutes"])
    assert exit_info.value.code == 2
    assert "'ten minutes' is not a duration: write it as 90s, 10m, 1h" in capsys.readouterr().err


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_runs_the_schedule_on_time_and_stops_before_the_reserve(monkeypatch):
    now = FakeTime()
    monkeypatch.setattr(budget_module.time, "perf_counter", now)
    clock = BudgetClock(Budget(100.0, started=now()), reserve_s=10.0)
    assert clock.progress() == 0.0
    now.now += 45.0
    assert clock.progress() == pytest.approx(0.5)  # 45 of the 90 s left for training
    clock.step_done()
    now.now += 2.0
    clock.step_done()  # one step: 2 s
    assert clock.step_s == 2.0 and clock.next_step_fits()
    assert clock.progress() == pytest.approx(49 / 90)  # where the schedule is when the next step ends
    now.now = 1000.0 + 88.5  # a 2 s step would end at 90.5, past training's end at 90
    assert not clock.next_step_fits()
    now.now = 1000.0 + 99.0
    clock.ended()
    assert clock.late_s() == pytest.approx(-1.0)


def test_a_resumed_clock_goes_on_from_its_progress_with_the_budget_left(monkeypatch):
    now = FakeTime()
    monkeypatch.setattr(budget_module.time, "perf_counter", now)
    # 60 of 100 s spent, the schedule at 0.6: 40 s left, 4 of them for the final validation.
    clock = BudgetClock(Budget(100.0, spent_before_s=60.0, started=now()), reserve_s=4.0, start_progress=0.6)
    assert clock.budget.left() == 40.0 and clock.progress() == pytest.approx(0.6)
    now.now += 18.0
    assert clock.progress() == pytest.approx(0.8)
    now.now += 18.0
    assert clock.progress() == 1.0


def test_a_budgeted_checkpoint_is_finished_when_its_schedule_is():
    assert not position_in_run(Path("x"), {"epoch": 3, "batch": 0, "progress": 0.7}, None)
    assert position_in_run(Path("x"), {"epoch": 3, "batch": 0, "progress": 1.0}, None)
    with pytest.raises(ValueError, match="position.progress must be a number in"):
        position_in_run(Path("x"), {"epoch": 3, "batch": 0, "progress": 1.5}, None)


def test_a_fine_tune_refuses_a_budget(tiny_folder):
    learn = Learner(tiny_dataloaders(tiny_folder), tiny_model())
    with pytest.raises(ValueError, match="budget_s=10 with a fine-tune"):
        learn.fit_schedule(2, 1e-3, freeze_epochs=1, budget_s=10)


@pytest.mark.slow  # 6 s of training
def test_a_learner_fits_to_a_budget_from_python(tiny_folder):
    ema, decays = EMA(half_life=0.1), Decays()
    learn = Learner(tiny_dataloaders(tiny_folder), tiny_model(), optimizer="adamw", cbs=[ema, decays])
    start = time.perf_counter()
    # The budget counts from the call: building the optimizer, whose first use imports for 1-4 s, included.
    learn.fit_one_cycle(1, 1e-2, budget_s=6.0)
    assert abs(time.perf_counter() - start - 6.0) < 1.5
    assert learn.state.progress == 1.0 and learn.state.epoch >= 1  # several passes over 12 images
    assert learn.recorder.lrs[-1] < 1e-2 * 0.1  # the one-cycle's low end, reached at the deadline
    # The EMA runs on the budget's fraction: its steps' decays multiply to half per tenth of the
    # time between the first step and the last, however many steps the machine managed.
    first, last = decays.progress[0], decays.progress[-1]
    assert math.prod(decays.values) == pytest.approx(0.5 ** ((last - first) / 0.1), rel=1e-6)
    assert len(set(decays.values[1:])) > 1  # steps of unequal time weigh unequally


class Decays(Callback):
    """The EMA's decay at each step and the progress it was set from."""

    order = 0  # after EMA (-5) has set the step's decay

    def before_fit(self, learn) -> None:
        self.values, self.progress = [], []

    def before_batch(self, learn) -> None:
        self.values.append(learn.ema.decay)
        self.progress.append(learn.state.progress)


class Capture(Callback):
    """Keeps the Learner and the time its fit ended."""

    order = 100

    def after_fit(self, learn) -> None:
        self.learn, self.ended = learn, time.perf_counter()


@pytest.mark.slow
def test_a_30_s_budget_ends_in_30_s_with_its_schedule_complete(tmp_path, capsys):
    capture = Capture()
    recipe = make_recipe("quick", budget_s=30.0)
    summary = train(recipe, TrainOptions(out=str(tmp_path / "run")), cbs=[capture])
    out = capsys.readouterr().out
    assert "budget 0:30, counted from now to the end of the final validation; preparing the data took" in out
    assert abs(summary["late_s"]) <= 0.05 * 30, summary  # within 5 %, the final validation included
    clock = capture.learn.state.clock
    assert capture.ended - clock.budget.started == pytest.approx(30.0, abs=0.05 * 30 + 2.0)  # + the last checkpoint
    assert capture.learn.state.progress == 1.0
    # The schedule reached its low end: the last step trains in its last tenth (one-cycle: under
    # 10 % of the peak rate, under 0.01 % on an idle machine), not at the peak a cut-off run stops at.
    assert capture.learn.recorder.lrs[-1] < recipe.lr * 0.1
    assert summary["epochs_trained"] > 1 and summary["budget_s"] == 30.0


@pytest.mark.slow
def test_the_ten_minute_preset_is_the_slim_stem_speedrun_to_its_budget(tiny_folder, tmp_path):
    assert make_recipe("imagenette-10m").budget_s == 600.0
    # The preset at a 12 s budget on the tiny folder: its model (the stem at half width), on time.
    # lr 0.02: at the speedrun's 0.2 a toy budgeted run diverged on CI once (its steps fall where the clock puts them).
    recipe = make_recipe("imagenette-10m", data=str(tiny_folder), size=32, presize=40, bs=8, valid_bs=12,
                         valid_size=40, budget_s=12.0, lr=0.02)
    summary = train(recipe, TrainOptions(preset="imagenette-10m", out=str(tmp_path / "run"), workers=1))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["stem_widen"] == 0.5 and config["budget_s"] == 12.0 and summary["preset"] == "imagenette-10m"
    assert abs(summary["late_s"]) <= 5.0 and summary["epochs_trained"] > 1


class InterruptAt(Callback):
    """Sends this process SIGINT (a Ctrl-C) once the schedule passes `progress`."""

    def __init__(self, progress: float):
        self.progress, self.sent = progress, False

    def after_batch(self, learn) -> None:
        if not self.sent and learn.state.progress >= self.progress:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_a_resumed_budgeted_run_keeps_the_budget_it_had_left(tmp_path, capsys):
    recipe, out = make_recipe("quick", budget_s=20.0), tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(recipe, TrainOptions(out=str(out)), cbs=[InterruptAt(0.4)])
    time.sleep(2.0)  # time between the runs is not the budget's
    from vivace.checkpoint import load_position
    saved = load_position(out / "last.safetensors")
    assert 0.4 <= saved["progress"] < 0.6 and 0 < saved["budget_spent_s"] < 20
    capsys.readouterr()
    capture = Capture()
    summary = train(recipe, TrainOptions(out=str(out), resume=True), cbs=[capture])
    said = capsys.readouterr().out
    left = format_duration(20.0 - saved["budget_spent_s"])
    assert f"{left} of the 0:20 budget left, counted from now" in said
    assert abs(summary["late_s"]) <= 0.05 * 20 + 0.5, summary  # the two parts together end at 20 s
    assert capture.learn.state.progress == 1.0 and capture.learn.recorder.lrs[-1] < recipe.lr * 0.1
    with pytest.raises(ValueError, match="its budget is spent"):
        train(recipe, TrainOptions(out=str(out), resume=True))


@pytest.mark.slow
def test_two_torchrun_processes_stop_on_the_same_step(tmp_path, tiny_folder):
    worker = Path(__file__).with_name("dist_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           str(tiny_folder), str(tmp_path), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "BUDGET": "8"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"steps{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["progress"] == 1.0 and ranks[0]["steps"] > 3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert abs(summary["late_s"]) <= 5.0, summary  # 5 s: the floor for short budgets


# -- choosing what fits the budget (vivace.choose) -----------------------------------------
from vivace.choose import Candidate, choose_for_budget, run_sizes, steps_per_second, time_steps  # noqa: E402


def test_a_candidate_curve_is_read_between_its_measured_points():
    c = Candidate("c", {}, curve=((2, 0.6), (8, 0.8)))
    assert c.expected_accuracy(4) == pytest.approx(0.7)  # halfway in log(epochs)
    assert c.expected_accuracy(20) == 0.8  # flat past the last point: never extrapolated upwards
    assert c.expected_accuracy(1) == pytest.approx(0.5)  # down the first segment's slope
    assert c.expected_accuracy(1e-6) == 0.0


def test_a_runs_speed_is_its_rates_averaged_over_time_with_step_times_linear_in_area():
    timed = {64: 0.25, 128: 1.0}  # a step's seconds at two sizes
    assert steps_per_second([64, 128], timed) == pytest.approx((4.0 + 1.0) / 2)  # rates averaged, not times
    assert steps_per_second([96], timed) == pytest.approx(1 / (0.25 + 0.75 * (96**2 - 64**2) / (128**2 - 64**2)))
    assert steps_per_second([128, 128], {128: 0.5}) == 2.0  # one size: one timing
    sizes = run_sizes(make_recipe(size_px=128, progressive=0.5))
    assert (min(sizes), sizes[0], sizes[-1], len(sizes)) == (64, 64, 128, 100)
    assert run_sizes(make_recipe(size_px=128)) == [128]


def test_the_calibration_times_a_progressive_run_at_its_first_and_final_sizes(tiny_folder):
    dls = tiny_dataloaders(tiny_folder)
    recipe = make_recipe(arch="xresnet18", widen=0.25, stem_widen=0.5, size_px=64, progressive=0.5, batch_size=4)
    timed = time_steps(recipe, dls, steps=3)
    assert list(timed) == [32, 64] and all(0 < seconds < 5 for seconds in timed.values())
    assert list(time_steps(replace(recipe, progressive=0.0), dls, steps=3)) == [64]


def test_the_choice_follows_the_epochs_each_candidate_can_afford(tiny_folder, monkeypatch):
    import vivace.choose as choose
    fast = Candidate("fast", dict(arch="xresnet18", widen=0.25), curve=((1, 0.5), (10, 0.7)))
    slow = Candidate("slow", dict(arch="xresnet34", widen=0.5), curve=((1, 0.4), (10, 0.9)))
    speeds = {0.25: 1000.0, 0.5: 100.0}  # images per second: the calibration, made exact here
    monkeypatch.setattr(choose, "images_per_second", lambda recipe, dls, steps=4: speeds[recipe.widen])
    dls = tiny_dataloaders(tiny_folder)  # 24 training images
    recipe = make_recipe(data=str(tiny_folder), budget_s=1.0)
    short = choose_for_budget(recipe, dls, Budget(0.3), (fast, slow))  # fast: ~12 epochs, slow: ~1
    assert short.recipe.widen == 0.25 and "chose fast" in short.reason and "over slow" in short.reason
    long = choose_for_budget(recipe, dls, Budget(30.0), (fast, slow))  # both past 10 epochs
    assert long.recipe.arch == "xresnet34" and long.recipe.widen == 0.5 and "90.0% expected" in long.reason


@pytest.mark.slow
def test_a_budget_without_model_flags_chooses_and_says_why(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--budget", "10s", "--widen", "0.25", "--size", "16",
                 "--presize", "24", "--bs", "8", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "budget 0:10, counted from now" in said and " chose " not in said  # model flags given: no choice
    out2 = tmp_path / "run2"
    # --lr applies on top of the choice; 0.02: at the speedrun's 0.2 a toy budgeted run diverged on CI once.
    assert main(["train", "--data", str(tiny_folder), "--budget", "20s", "--lr", "0.02", "--out", str(out2)]) == 0
    said = capsys.readouterr().out
    [line] = [line for line in said.splitlines() if line.startswith("budget 0:20: chose ")]
    assert "img/s here" in line and "expected on imagenette2-160 by the budget table" in line
    assert " over xresnet18 x0.5" in line  # the table's other candidate, and what it would have given
    saved = json.loads((out2 / "config.json").read_text())
    assert (saved["arch"], saved["widen"], saved["budget_s"], saved["lr"]) == ("xresnet18", 0.5, 20.0, 0.02)
    summary = json.loads((out2 / "summary.json").read_text())
    assert abs(summary["late_s"]) <= 5.0


def test_a_budgeted_bar_names_the_epochs_estimated_and_the_time_left(monkeypatch):
    from types import SimpleNamespace

    from vivace.progress import epoch_label
    now = FakeTime()
    monkeypatch.setattr(budget_module.time, "perf_counter", now)
    monkeypatch.setattr("vivace.progress.time.perf_counter", now)
    clock = BudgetClock(Budget(600.0, started=now()), reserve_s=10.0)
    now.now += 338.0
    assert epoch_label(SimpleNamespace(epoch=2, n_epochs=7, clock=clock)) == "epoch 3/~7, 4:12 left"
    assert epoch_label(SimpleNamespace(epoch=0, n_epochs=0, clock=clock)) == "epoch 1, 4:12 left"  # not known yet
    assert epoch_label(SimpleNamespace(epoch=2, n_epochs=5, clock=None)) == "epoch 3/5"


def test_a_budget_too_short_to_train_says_so_before_any_step(tiny_folder):
    learn = Learner(tiny_dataloaders(tiny_folder), tiny_model())
    time.sleep(0.01)
    learn.budget_started = time.perf_counter() - 5.0  # 5 s of a 2 s budget spent before the fit
    with pytest.raises(ValueError, match=r"a budget of 0:02 leaves no time to train: 0:0\d of it spent"):
        learn.fit_one_cycle(1, 1e-2, budget_s=2.0)
    assert learn.recorder.lrs == []


@pytest.mark.parametrize("given, preset, chooses", [
    ({"budget_s": 600.0, "data": "d"}, "", True),
    ({"budget_s": 600.0, "data": "d", "lr": 0.1}, "", True),  # --lr applies on top of the choice
    ({"budget_s": 600.0}, "", False),  # no --data: the quick job on the embedded data, to the budget
    ({"budget_s": 600.0, "data": "d", "arch": "xresnet34"}, "", False),  # explicit flags win
    ({"budget_s": 600.0, "data": "d", "epochs": 3}, "", False),
    ({"budget_s": 600.0, "data": "d"}, "imagenette-128-5ep", False),  # a preset is a choice made
    ({"data": "d"}, "", False),
])
def test_the_cli_chooses_only_when_nothing_about_the_model_is_given(given, preset, chooses):
    from vivace.cli import chooses_for_budget
    assert chooses_for_budget(given, TrainOptions(preset=preset)) is chooses


def test_an_elastic_restart_trains_on_with_the_model_its_run_chose(tmp_path):
    from vivace.records import write_json
    from vivace.train import as_chosen
    base = make_recipe("imagenette-speedrun", data="d", budget_s=600.0, lr=0.1)
    chosen = make_recipe("imagenette-speedrun", data="d", budget_s=600.0, lr=0.1, arch="xresnet34", widen=1.0)
    assert as_chosen(base, tmp_path) == base  # no run yet: nothing chosen
    write_json(tmp_path / "config.json", chosen.to_dict())
    assert as_chosen(base, tmp_path) == chosen
