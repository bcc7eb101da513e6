"""The chapter's training techniques as callbacks: Mixup and CutMix (the batch hook), EMA of the
weights and progressive resizing (which configure the training step), and `technique_callbacks`,
which turns the Recipe's `TechniqueSpec` into them. The pure functions are in `vivace.mixing`
and `vivace.schedule`."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .callbacks import Callback, Loop
from .flags import Range, knob
from .mixing import check_alpha, cutmix, mixup
from .schedule import SizeSchedule


@dataclass
class TechniqueSpec:
    """The Recipe's techniques: `technique_callbacks`' arguments (0 = off)."""

    mixup_alpha: float = knob(0.0, "Mixup alpha; 0 = off", aliases=("mixup",), range=Range(0.0))
    cutmix_alpha: float = knob(0.0, "CutMix alpha; 0 = off (both > 0: alternate per batch)", aliases=("cutmix",),
                               range=Range(0.0))
    ema_decay: float = knob(0.0, "EMA decay of weights for evaluation, per step; 0 = off", aliases=("ema",),
                            range=Range(0.0, 1.0, high_open=True))
    ema_half_life: float = knob(0.0, "EMA of weights whose half-life is this fraction of training (of its time "
                                     "under --budget), instead of a decay per step; 0 = off",
                                range=Range(0.0, 1.0))
    progressive: float = knob(0.0, "progressive resizing start fraction of size; 0 = off", range=Range(0.0, 1.0))
    progressive_end: float = knob(0.75, "fraction of training after which the size stays final",
                                  range=Range(0.0, 1.0, low_open=True))
    progressive_start: float = knob(0.0, "fraction of training spent at the start size before it ramps "
                                         "(FFCV's ImageNet configs: 160 px until 75 %)",
                                    range=Range(0.0, 1.0, high_open=True))


def technique_callbacks(mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, ema_decay: float = 0.0,
                        ema_half_life: float = 0.0, progressive: float = 0.0, progressive_end: float = 0.75,
                        progressive_start: float = 0.0, *, size_px: int,
                        seed: int | None = None) -> list[Callback]:
    """The techniques switched on (> 0), as callbacks; `size_px` is the final training crop side."""
    cbs: list[Callback] = []
    if mixup_alpha > 0 and cutmix_alpha > 0:
        cbs.append(MixupOrCutMix(mixup_alpha, cutmix_alpha, seed=seed))
    elif mixup_alpha > 0:
        cbs.append(Mixup(mixup_alpha, seed=seed))
    elif cutmix_alpha > 0:
        cbs.append(CutMix(cutmix_alpha, seed=seed))
    if ema_decay > 0 and ema_half_life > 0:
        raise ValueError(f"ema_decay={ema_decay} and ema_half_life={ema_half_life}: give one of them")
    if ema_decay > 0 or ema_half_life > 0:
        cbs.append(EMA(ema_decay, half_life=ema_half_life))
    if progressive > 0:
        cbs.append(ProgressiveResize(SizeSchedule(size_px, progressive, progressive_end, ramp_start=progressive_start)))
    return cbs


class ProgressiveResize(Callback):
    """Ramps the training crop size with progress; the LR schedule runs on unbroken.

    It configures the step: `learn.size_schedule`, from which each training step takes its crop
    size. No loader state changes: the loader's own size (the final one) and batch size stay.
    """

    order = -30

    def __init__(self, schedule: SizeSchedule):
        self.schedule = schedule

    def before_fit(self, learn: Loop) -> None:
        learn.size_schedule = self.schedule

    def after_fit(self, learn: Loop) -> None:
        learn.size_schedule = None


class WeightAverage:
    """An exponential moving average of a model's weights: ema = decay * ema + (1 - decay) * weights.

    BatchNorm statistics are copied, not averaged. The Learner's step calls `update` after each
    optimizer step when `learn.ema` is set (the EMA callback sets it).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - self.decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)


class EMA(Callback):
    """Evaluate, and end the fit with, an exponential moving average of the weights.

    It configures the step: `learn.ema` (a WeightAverage, updated after every optimizer step) and
    `learn.eval_model` (the average) during the fit; the average is loaded into `learn.model`
    when the fit ends.

    `decay` is per step. With `half_life` (a fraction of training) the decay follows the fit's
    progress instead: a step that advances it by dp weighs 1 - 0.5 ** (dp / half_life), so the
    average spans the same share of any run, and under a budget the same share of its time
    (Composer's EMA takes its half-life in "dur", the run's duration, too).
    """

    order = -5

    def __init__(self, decay: float = 0.999, half_life: float = 0.0):
        if not 0.0 < decay < 1.0 and half_life == 0:
            raise ValueError(f"EMA decay={decay} must be in (0, 1)")
        if not 0.0 <= half_life <= 1.0:
            raise ValueError(f"EMA half_life={half_life} must be a fraction of training in [0, 1]")
        self.decay, self.half_life = decay, half_life
        self.average: WeightAverage | None = None
        self.saved: dict[str, Tensor] | None = None  # weights from a checkpoint, until before_fit
        self.last_progress: float | None = None  # the fit's progress at the previous step (half_life)

    def before_fit(self, learn: Loop) -> None:
        if self.average is None:
            self.average = WeightAverage(learn.model, 1.0 if self.half_life else self.decay)  # half_life: set per step
            if self.saved is not None:
                self.average.model.load_state_dict(self.saved)
        learn.ema, learn.eval_model = self.average, self.average.model
        self.last_progress = None

    def before_batch(self, learn: Loop) -> None:
        if self.half_life > 0:  # this step's share of the fit sets its weight
            progress = learn.state.progress
            advanced = 0.0 if self.last_progress is None else max(progress - self.last_progress, 0.0)
            self.average.decay, self.last_progress = 0.5 ** (advanced / self.half_life), progress

    def after_fit(self, learn: Loop) -> None:
        learn.model.load_state_dict(self.average.model.state_dict())
        learn.ema, learn.eval_model = None, learn.model

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.average.model.state_dict()} if self.average is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = state.get("weights")
        if self.average is not None and self.saved is not None:
            self.average.model.load_state_dict(self.saved)


# -- batch mixing: the one kind of callback that changes the training batch (transform_batch) --

class _SeededCallback(Callback):
    """A callback with its own RNG (or the global one when seed is None), checkpointed with it."""

    def __init__(self, seed: int | None):
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()} if self.generator is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.generator is not None and "rng" in state:
            self.generator.set_state(state["rng"])


class _BatchMixer(_SeededCallback):
    """Applies `mix` (mixup or cutmix, alpha) to every training batch; anything else passes through."""

    mix = staticmethod(mixup)

    def __init__(self, alpha: float, seed: int | None):
        check_alpha("alpha", alpha)
        super().__init__(seed)
        self.alpha = alpha

    def transform_batch(self, learn: Loop, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if not learn.state.training:
            return x, y
        return self.mix(x, y, learn.n_classes, self.alpha, self.generator)


class Mixup(_BatchMixer):
    """Callback: mixup on every training batch (fastai `MixUp`, per-item lambda)."""

    mix = staticmethod(mixup)

    def __init__(self, alpha: float = 0.4, seed: int | None = None):
        super().__init__(alpha, seed)


class CutMix(_BatchMixer):
    """Callback: CutMix on every training batch (per-item boxes)."""

    mix = staticmethod(cutmix)

    def __init__(self, alpha: float = 1.0, seed: int | None = None):
        super().__init__(alpha, seed)


class MixupOrCutMix(_SeededCallback):
    """Callback: per batch, CutMix with probability switch_prob, otherwise mixup (timm style)."""

    def __init__(self, mixup_alpha: float = 0.4, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, seed: int | None = None):
        check_alpha("mixup_alpha", mixup_alpha)
        check_alpha("cutmix_alpha", cutmix_alpha)
        if not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"switch_prob={switch_prob} must be in [0, 1]")
        super().__init__(seed)
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = mixup_alpha, cutmix_alpha, switch_prob

    def transform_batch(self, learn: Loop, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mixup or CutMix a training batch; anything else passes through."""
        if not learn.state.training:
            return x, y
        use_cutmix = float(torch.rand(1, generator=self.generator)) < self.switch_prob  # CPU draw
        if use_cutmix:
            return cutmix(x, y, learn.n_classes, self.cutmix_alpha, self.generator)
        return mixup(x, y, learn.n_classes, self.mixup_alpha, self.generator)
