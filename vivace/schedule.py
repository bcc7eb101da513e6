"""Schedules as pure functions of training progress p in [0, 1] (fraction of all batches done)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

from .budget import parse_duration
from .flags import Range, knob

Schedule = Callable[[float], float]
ScheduleName = Literal["one_cycle", "flat_cos", "fine_tune"]


@dataclass
class ScheduleSpec:
    """The Recipe's schedule: the arguments of `Learner.fit_schedule`."""

    epochs: int = knob(5, "training epochs", range=Range(1))
    budget_s: float = knob(0.0, "train to a wall-clock deadline instead of a number of epochs: 90s, 10m, 1h "
                                "(a number is seconds); the schedule runs on the time spent and the final "
                                "validation is inside it; 0 = --epochs decide",
                           aliases=("budget",), range=Range(0.0), parse=parse_duration)
    lr: float = knob(3e-3, "peak learning rate for the global batch", range=Range(0.0, 10.0, low_open=True))
    schedule: ScheduleName = knob("one_cycle", "one_cycle, flat_cos, or fine_tune (fastai's: --freeze-epochs with "
                                               "the body frozen at lr, then one-cycle at lr/2 spread by --lr-mult)")
    pct_start: float = knob(0.25, "fraction of training spent warming up (one_cycle, fine_tune after unfreezing) "
                                  "or flat (flat_cos)", range=Range(0.0, 1.0))
    freeze_epochs: int = knob(0, "fine-tune: the first N of --epochs train the head (and BatchNorm) only; "
                                 "N > 0 implies --schedule fine_tune", range=Range(0))
    lr_mult: float = knob(100.0, "fine-tune: the head's rate over the stem's after unfreezing (fastai's "
                                 "slice(lr/100, lr)); the body's between, on a log scale", range=Range(1.0))

    @property
    def fine_tunes(self) -> bool:
        """Whether `Learner.fit_schedule` runs `fine_tune`: its model needs its layer groups."""
        return self.schedule == "fine_tune" or self.freeze_epochs > 0


def cos_anneal(start: float, end: float, p: float) -> float:
    """Cosine from `start` (p=0) to `end` (p=1)."""
    return end + (start - end) * (1 + math.cos(math.pi * min(max(p, 0.0), 1.0))) / 2


def combined_cos(pct: float, start: float, middle: float, end: float) -> Schedule:
    """Cosine start->middle over the first `pct` of training, then middle->end."""
    def schedule(p: float) -> float:
        if pct > 0 and p < pct:
            return cos_anneal(start, middle, p / pct)
        return cos_anneal(middle, end, (p - pct) / (1 - pct) if pct < 1 else 1.0)
    return schedule


def one_cycle(lr_max: float, div: float = 25.0, div_final: float = 1e5, pct_start: float = 0.25) -> Schedule:
    """fastai's one-cycle LR: warm lr_max/div -> lr_max over pct_start, then anneal to lr_max/div_final."""
    return combined_cos(pct_start, lr_max / div, lr_max, lr_max / div_final)


def one_cycle_momentum(moms: tuple[float, float, float] = (0.95, 0.85, 0.95), pct_start: float = 0.25) -> Schedule:
    """Momentum moves opposite to the LR: high while the LR is low."""
    return combined_cos(pct_start, *moms)


def flat_cos(lr: float, pct_start: float = 0.75, div_final: float = 1e5) -> Schedule:
    """Flat at `lr` for pct_start of training, then cosine down to lr/div_final."""
    return combined_cos(pct_start, lr, lr, lr / div_final)


def phases(at: float, first: Schedule, second: Schedule) -> Schedule:
    """`first` over progress [0, at), then `second`, each run over its own [0, 1]."""
    def schedule(p: float) -> float:
        return first(p / at) if p < at else second((p - at) / (1 - at) if at < 1 else 1.0)
    return schedule


def constant(value: float) -> Schedule:
    """The same value throughout."""
    return lambda p: value


@dataclass(frozen=True)
class SizeSchedule:
    """Progressive resizing: crop size ramps from start_frac*final to final, snapped to `multiple`.

    The first `ramp_start` fraction of training stays at the start size, the ramp runs linearly
    until `ramp_end`, the rest trains at the final size. Sizes never exceed `final_px`.
    """

    final_px: int
    start_frac: float = 0.5
    ramp_end: float = 0.75
    multiple: int = 32
    ramp_start: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.start_frac <= 1:
            raise ValueError(f"SizeSchedule.start_frac={self.start_frac} must be in (0, 1]")
        if not 0 < self.ramp_end <= 1:
            raise ValueError(f"SizeSchedule.ramp_end={self.ramp_end} must be in (0, 1]")
        if not 0 <= self.ramp_start < self.ramp_end:
            raise ValueError(f"SizeSchedule.ramp_start={self.ramp_start} must be in [0, ramp_end={self.ramp_end})")
        if self.multiple < 1 or self.final_px < self.multiple:
            raise ValueError(f"SizeSchedule: final_px={self.final_px} must be >= multiple={self.multiple} >= 1")

    def __call__(self, p: float) -> int:
        start = self.final_px * self.start_frac
        ramp = (p - self.ramp_start) / (self.ramp_end - self.ramp_start)
        px = start + (self.final_px - start) * min(max(ramp, 0.0), 1.0)
        snapped = int(round(px / self.multiple)) * self.multiple
        return max(self.multiple, min(snapped, self.final_px))
