"""Choosing what to train in a budget: `vivace train --budget 10m` with no model, size or epoch flag.

Each candidate is the speedrun's recipe with another model or size. The table holds what each one
was measured to reach on imagenette2-160 after so many epochs. A short calibration (a few
training steps per candidate, counted in the budget) measures this machine's speed for each;
the rule then picks the candidate whose measured curve is highest at the epochs it can afford.
Explicit flags always win: the CLI chooses only when none of them is given.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from . import distributed
from .budget import Budget, format_duration
from .callbacks import Callback
from .data import DataLoaders
from .guards import StopAfter
from .learner import Learner
from .losses import LossSpec, make_loss
from .models import ModelSpec, create_model
from .optim import OptimizerSpec
from .progress import ProgressBar
from .recipe import Recipe
from .schedule import SizeSchedule

# The Recipe fields a candidate sets; given explicitly, any of them (or --epochs, or --preset)
# turns the choice off.
CHOSEN_FIELDS = ("arch", "widen", "stem_widen", "size_px", "progressive")
CHOICE_OFF_FIELDS = (*CHOSEN_FIELDS, "presize_px", "batch_size", "epochs")


@dataclass(frozen=True)
class Candidate:
    """A recipe to choose from: the speedrun's with `fields` changed, and its measured curve:
    (epochs, accuracy on imagenette2-160), each point a run of that many epochs (a fixed run), or
    one that trained that many to a budget (its schedule complete either way)."""

    name: str
    fields: dict[str, Any]
    curve: tuple[tuple[float, float], ...]

    def expected_accuracy(self, epochs: float) -> float:
        """The curve at `epochs`: linear in log(epochs) between points, flat past the last, and down
        the first segment's slope below the first (never under 0)."""
        points = sorted(self.curve)
        if epochs >= points[-1][0]:
            return points[-1][1]
        if len(points) == 1:
            return points[0][1] * min(epochs / points[0][0], 1.0)
        (e0, a0), (e1, a1) = next(((p, q) for p, q in zip(points, points[1:]) if epochs < q[0]),
                                  (points[0], points[1]))
        slope = (a1 - a0) / math.log(e1 / e0)
        return max(a0 + slope * math.log(max(epochs, 1e-3) / e0), 0.0)


# Measured on imagenette2-160 (AMD EPYC, 2 cores, fp32; docs/BENCHMARKS.md, "Budgets"). fastai's
# stem: runs of the speedrun recipe for that many epochs, seed 42 (5, 10 and 18 epochs beside the
# budgets, 12-06; 9 epochs 12-05; 12 epochs the mean of seeds 42 and 43, 12-05), and the 20-minute
# budget's mean (seeds 42 and 43, 12-06). The stem at half width: budgets of 5, 10 and 20 minutes,
# seed 42 (12-06).
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("xresnet18 x0.5, 64->128 px",
              dict(arch="xresnet18", widen=0.5, stem_widen=1.0, size_px=128, progressive=0.5),
              curve=((5, 0.773), (9, 0.817), (10, 0.831), (12, 0.845), (18, 0.8696), (22.85, 0.8784))),
    Candidate("xresnet18 x0.5, stem x0.5, 64->128 px",
              dict(arch="xresnet18", widen=0.5, stem_widen=0.5, size_px=128, progressive=0.5),
              curve=((8.70, 0.8168), (18.70, 0.8690), (37.22, 0.8938))),
)


class StepTimes(Callback):
    """The times between training steps."""

    order = 100

    def before_fit(self, learn) -> None:
        self.times: list[float] = [time.perf_counter()]

    def after_batch(self, learn) -> None:
        self.times.append(time.perf_counter())


def images_per_second(recipe: Recipe, dls: DataLoaders, steps: int = 4) -> float:
    """This machine's training speed for `recipe` on `dls`, averaged over a budgeted run's time: steps
    timed (`time_steps`), then `steps_per_second` between them."""
    return dls.train.batch_size * dls.train.world_size * steps_per_second(run_sizes(recipe),
                                                                          time_steps(recipe, dls, steps))


def time_steps(recipe: Recipe, dls: DataLoaders, steps: int = 4) -> dict[int, float]:
    """A training step's seconds at the run's final size and, under progressive resizing, at its first."""
    return {size: step_seconds(recipe, dls, size, steps) for size in sorted({min(run_sizes(recipe)), recipe.size_px})}


def step_seconds(recipe: Recipe, dls: DataLoaders, size_px: int, steps: int = 4) -> float:
    """One training step's seconds for `recipe` on `dls` at `size_px`: the fastest of `steps` steps, the
    first (which warms up) not counted."""
    torch.manual_seed(recipe.seed)
    model = create_model(**recipe.kwargs(ModelSpec), n_out=len(dls.vocab))
    stop, times = StopAfter(min(steps, len(dls.train))), StepTimes()
    learn = Learner(dls, model, make_loss(**recipe.kwargs(LossSpec)), metrics=None, cbs=[stop, times],
                    **recipe.kwargs(OptimizerSpec))
    learn.cbs = [cb for cb in learn.cbs if not isinstance(cb, ProgressBar)]  # quiet: a probe, not a fit
    learn.recorder.print_table = False
    learn.size_schedule = lambda p: size_px
    learn.fit(1, recipe.lr)
    gaps = [b - a for a, b in zip(times.times, times.times[1:])]
    return min(gaps[1:]) if len(gaps) > 1 else gaps[0]


def run_sizes(recipe: Recipe, points: int = 100) -> list[int]:
    """The crop size at `points` even fractions of a run: its final size throughout without progressive resizing."""
    if not recipe.progressive:
        return [recipe.size_px]
    sizes = SizeSchedule(recipe.size_px, recipe.progressive, recipe.progressive_end,
                         ramp_start=recipe.progressive_start)
    return [sizes(i / points) for i in range(points)]


def steps_per_second(sizes: list[int], timed: dict[int, float]) -> float:
    """The mean steps per second over a run at `sizes` (one per even fraction of its time), a step's
    seconds linear in the crop's area between the sizes `timed`. A budget's size schedule runs on time,
    so each size's share is of the time, and the mean is of rates, not of step times. Linear in area,
    not proportional to it: in the 10-minute budgets on imagenette2-160 (docs/BENCHMARKS.md), a step
    at 64 px took 0.29 of one at 128 px, not 0.25, and one at 96 px 0.57-0.60, on that line (0.59)."""
    (small, t_small), (large, t_large) = min(timed.items()), max(timed.items())
    if small == large:
        return 1.0 / t_large
    slope = (t_large - t_small) / (large**2 - small**2)
    return sum(1.0 / (t_small + slope * (size**2 - small**2)) for size in sizes) / len(sizes)


@dataclass(frozen=True)
class Option:
    """A candidate as calibrated here: its recipe, speed, the epochs it can afford and their accuracy."""

    candidate: Candidate
    recipe: Recipe
    images_per_s: float
    epochs: float
    accuracy: float

    def __str__(self) -> str:
        return f"{self.candidate.name}: {self.epochs:.1f} epochs, {self.accuracy:.1%}"


@dataclass(frozen=True)
class Choice:
    """The recipe chosen for a budget, and the line that says why."""

    recipe: Recipe
    reason: str


def choose_for_budget(recipe: Recipe, dls: DataLoaders, budget: Budget,
                      candidates: tuple[Candidate, ...] = CANDIDATES) -> Choice:
    """The candidate the table says is most accurate for the epochs this machine can afford in what
    is left of `budget` (each candidate calibrated on `dls`), and one line saying why."""
    started = time.perf_counter()
    trials = [replace(recipe, **c.fields) for c in candidates]
    speeds = [images_per_second(trial, dls) for trial in trials]
    train_s = budget.left() * 0.95  # less the final validation and the epochs' ends
    epochs = [train_s * speed / (dls.train.n_items * dls.train.world_size) for speed in speeds]
    options = [Option(c, trial, speed, e, c.expected_accuracy(e))
               for c, trial, speed, e in zip(candidates, trials, speeds, epochs)]
    best = max(range(len(options)), key=lambda i: options[i].accuracy)
    chosen = options[int(distributed.from_main([float(best)])[0])]  # rank 0's: every rank trains one model
    others = "; ".join(str(o) for o in options if o is not chosen)
    reason = (f"budget {format_duration(budget.seconds)}: chose {chosen.candidate.name} ({chosen.images_per_s:.0f} "
              f"img/s here, ~{chosen.epochs:.1f} epochs, {chosen.accuracy:.1%} expected on imagenette2-160 by the "
              f"budget table)" + (f" over {others}" if others else "")
              + f"; the calibration took {time.perf_counter() - started:.0f} s of the budget")
    return Choice(chosen.recipe, reason)
