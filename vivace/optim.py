"""Optimizers with decoupled weight decay, never on BatchNorm weights or biases, and discriminative
learning rates: each parameter group carries an `lr_mult`, its rate a multiple of the schedule's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from .flags import Range, knob

OptName = Literal["sgd", "adamw", "ranger"]


def param_groups(model: nn.Module, weight_decay: float, parts: Sequence[nn.Module] = ()) -> list[dict]:
    """Two groups: matrices and conv kernels decay; 1-D params (BN, biases) do not. With `parts`
    (the model's layer groups: stem, body, head), two such groups for each, for discriminative rates.

    Frozen parameters stay in their group: they get no gradient, so the optimizer skips them, and
    the groups are the same frozen or not (a checkpoint restores into either phase of a fine-tune).
    """
    groups = []
    for part in parts or [model]:
        params = list(part.parameters())
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, "lr_mult": 1.0},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr_mult": 1.0}]
    return groups


class Lookahead:
    """Lookahead (Zhang et al. 2019): every k steps pull slow weights towards the fast ones by alpha.

    With RAdam inside this is the "Ranger" optimizer fastai's Imagenette records used. A plain
    wrapper (not an Optimizer subclass) that shares the inner optimizer's param_groups, so
    schedules that set lr/momentum reach it.
    """

    def __init__(self, inner: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5):
        if k < 1 or not 0 < alpha <= 1:
            raise ValueError(f"Lookahead: k={k} must be >= 1 and alpha={alpha} in (0, 1]")
        self.inner, self.k, self.alpha, self.steps = inner, k, alpha, 0
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.slow = [[p.detach().clone() for p in g["params"]] for g in self.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.inner.step(closure)
        self.steps += 1
        if self.steps % self.k == 0:
            for group, slows in zip(self.param_groups, self.slow):
                for p, slow in zip(group["params"], slows):
                    slow.add_(p - slow, alpha=self.alpha)
                    p.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "steps": self.steps, "slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.steps = state["steps"]
        for slows, saved in zip(self.slow, state["slow"]):
            for slow, s in zip(slows, saved):
                slow.copy_(s)


@dataclass
class OptimizerSpec:
    """The Recipe's optimizer: `make_optimizer`'s keyword arguments (and the Learner's)."""

    optimizer: OptName = knob("adamw", "adamw, sgd (Nesterov) or ranger (RAdam + lookahead)", aliases=("opt",))
    weight_decay: float = knob(0.01, "weight decay (decoupled for adamw/ranger), not on BatchNorm or biases",
                               aliases=("wd",), range=Range(0.0))
    momentum: float = knob(0.9, "momentum (sgd) or beta1 (adamw, ranger) where the schedule keeps it (flat_cos)",
                           aliases=("mom",), range=Range(0.0, 1.0, high_open=True))


def make_optimizer(model: nn.Module, optimizer: OptName = "sgd", lr: float = 1e-3, weight_decay: float = 5e-5,
                   momentum: float = 0.9, foreach: bool | None = None, fused: bool | None = None,
                   parts: Sequence[nn.Module] = ()) -> torch.optim.Optimizer:
    """Build the `optimizer` named over `param_groups(model, weight_decay, parts)`.

    `foreach` and `fused` pick torch's implementation (None: torch's choice, foreach on CUDA);
    fused (one kernel for all parameters) exists for sgd and adamw, not for Ranger's RAdam.
    """
    groups = param_groups(model, weight_decay, parts)
    if optimizer == "sgd":
        # SGD's weight_decay is L2, which with plain SGD equals decoupled decay scaled by lr.
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, foreach=foreach, fused=fused)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.99), eps=1e-6, foreach=foreach, fused=fused)
    if fused:
        raise ValueError(f"optimizer {optimizer!r} has no fused implementation in torch: use sgd or adamw")
    if optimizer == "ranger":
        radam = torch.optim.RAdam(groups, lr=lr, betas=(momentum, 0.99), eps=1e-6,
                                  decoupled_weight_decay=True, foreach=foreach)
        return Lookahead(radam)
    raise ValueError(f"optimizer={optimizer!r}: choose one of 'sgd', 'adamw', 'ranger'")


def set_hyper(opt: torch.optim.Optimizer, lr: float, momentum: float | None) -> None:
    """Set every group's LR (`lr` times the group's `lr_mult`) and momentum (or Adam's beta1)."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        if momentum is None:
            continue
        if "betas" in group:
            group["betas"] = (momentum, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = momentum


def set_lr_mults(opt: torch.optim.Optimizer, mults: Sequence[float]) -> None:
    """Give the groups of layer group i (two each: `param_groups`) the rate multiple mults[i]."""
    if len(opt.param_groups) != 2 * len(mults):
        raise ValueError(f"{len(mults)} learning rates for {len(opt.param_groups) // 2} layer groups")
    for i, group in enumerate(opt.param_groups):
        group["lr_mult"] = float(mults[i // 2])


def even_mults(low: float, n: int) -> list[float]:
    """n multiples spaced evenly on a log scale from `low` to 1 (fastai's `even_mults`, as a fraction of the top)."""
    if n == 1:
        return [1.0]
    return [low ** (1 - i / (n - 1)) for i in range(n)]


def spread_lr(lr: float | slice, n_groups: int) -> tuple[float, list[float]]:
    """fastai's learning rates per layer group: the top rate and each group's multiple of it.

    A number: every group at it. slice(hi): the last group at hi, the others at hi/10.
    slice(lo, hi): from lo (the first group) to hi (the last), evenly on a log scale.
    """
    if not isinstance(lr, slice):
        return float(lr), [1.0] * n_groups
    if lr.start is None:
        return float(lr.stop), [0.1] * (n_groups - 1) + [1.0]
    return float(lr.stop), even_mults(lr.start / lr.stop, n_groups)
