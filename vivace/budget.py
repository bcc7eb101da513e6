"""Training to a wall-clock deadline (`vivace train --budget 10m`): the budget, and a fit's progress on it.

A budgeted fit runs its schedules (learning rate, momentum, progressive-resize size) on the
fraction of its *time* spent, not of its batches, so it ends at the deadline with the schedule
completed. Cutting a longer run short leaves the learning rate high; a schedule that decays over
the budget beats it at every budget (Li, Yumer and Ramanan, "Budgeted Training", ICLR 2020).

The budget counts from the end of data preparation (a download or a cache build happens once and
is reported apart) to the end of the final validation, which is timed beforehand and kept out of
the training time. A resumed run keeps what was left of its budget.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float) -> float:
    """Seconds in `90s`, `10m`, `1h`, `1h30m`, `2.5m` or a plain number; ValueError for other text."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        cleaned = text.strip().lower().replace(" ", "")
        try:
            seconds = float(cleaned)
        except ValueError:
            parts = _PART.findall(cleaned)
            if not parts or "".join(n + u for n, u in parts) != cleaned:
                raise ValueError(f"{text!r} is not a duration: write it as 90s, 10m, 1h or 1h30m "
                                 "(a plain number is seconds)") from None
            seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    return seconds  # its range (>= 0, finite) is the field's to check: one message for every field


def format_duration(seconds: float) -> str:
    """`9:58` or `1:02:03`: minutes and seconds, hours when there are any."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Budget:
    """A run's wall-clock budget: `seconds` in all, `spent_before_s` of them spent before this
    process (a resumed run's), counted from `started` (a `time.perf_counter()` reading)."""

    seconds: float
    spent_before_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def deadline(self) -> float:
        """When the budget runs out, on the `time.perf_counter()` clock."""
        return self.started + self.seconds - self.spent_before_s

    def spent(self) -> float:
        return self.spent_before_s + time.perf_counter() - self.started

    def left(self) -> float:
        return self.deadline - time.perf_counter()


class BudgetClock:
    """A budgeted fit's progress: from `start_progress` now to 1 at the deadline less `reserve_s`
    (the final validation's time), and whether one more training step fits before then.

    A step's time is a running average of the gaps between steps in an epoch (data, augmentation,
    forward, backward, callbacks), so a machine that slows down ends the fit earlier, not later.
    """

    smoothing = 0.3  # weight of the newest step in the running average

    def __init__(self, budget: Budget, reserve_s: float, start_progress: float = 0.0):
        self.budget, self.reserve_s, self.start_progress = budget, reserve_s, start_progress
        self.fit_started = time.perf_counter()
        self.end = budget.deadline - reserve_s  # when training stops, on the perf_counter clock
        self.step_s = 0.0
        self.last_step: float | None = None
        self.ended_at: float | None = None  # when the final validation ended

    def progress(self) -> float:
        """The fraction of the fit's schedule due at the end of the next step, in [start_progress, 1]:
        so the last step, which ends at training's end, trains at the schedule's low end."""
        span = self.end - self.fit_started
        if span <= 0:
            return 1.0
        done = (time.perf_counter() + self.step_s - self.fit_started) / span
        return min(self.start_progress + (1 - self.start_progress) * done, 1.0)

    def step_done(self) -> None:
        """Called after each training step: updates the step-time estimate."""
        now = time.perf_counter()
        if self.last_step is not None:
            gap = now - self.last_step
            self.step_s = gap if self.step_s == 0 else self.smoothing * gap + (1 - self.smoothing) * self.step_s
        self.last_step = now

    def new_epoch(self) -> None:
        """The gap to an epoch's first step holds the validation and the epoch's start: not a step's time."""
        self.last_step = None

    def next_step_fits(self) -> bool:
        """Whether another training step ends before training's end (the deadline less the reserve)."""
        return time.perf_counter() + self.step_s <= self.end

    def ended(self) -> None:
        """Called when the final validation is done: the time the run is judged by."""
        self.ended_at = time.perf_counter()

    def late_s(self) -> float:
        """Seconds past the deadline the final validation ended (negative: early)."""
        return (self.ended_at if self.ended_at is not None else time.perf_counter()) - self.budget.deadline
