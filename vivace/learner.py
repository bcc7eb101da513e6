"""The Learner: data + model + loss + optimizer, and the one training loop they run in.

A training step (`Learner._train_step`) reads in data-flow order: this step's crop size (from
`size_schedule`, progressive resizing), augmentation of the cached uint8 batch at that size,
Mixup/CutMix, forward and loss under autocast, backward, optimizer step, then the weight
average (`ema`). Callbacks observe around it (record, progress, checkpoints, the NaN guard) and
may ask the loop to stop. Where the fit is (epoch, batch, progress, lr, size, loss, metrics) is
one small value, `learn.state` (a `FitState`), which the loop writes and callbacks read; the
Learner's other attributes are its configuration, fixed when it is built.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from . import distributed, runtime
from . import schedule as sched
from .budget import Budget, BudgetClock, format_duration
from .callbacks import Callback, Recorder
from .flags import Range, knob
from .guards import NaNGuard
from .losses import CrossEntropy
from .metrics import accuracy
from .optim import OptName, even_mults, make_optimizer, set_hyper, set_lr_mults, spread_lr
from .pictures import Pictures
from .progress import ProgressBar
from .runtime import AmpMode, CompileMode
from .techniques import WeightAverage


@dataclass
class StepSpec:
    """The Recipe's settings of how the step runs: the Learner's keyword arguments of the same names."""

    channels_last: bool = knob(True, "NHWC memory format: measured ~1.4x faster on CPU for xresnet50")
    amp: AmpMode = knob("auto", "mixed precision: auto (bf16 on CUDA and AMX CPUs, else off), bf16, fp16, off")
    compile: bool = knob(False, "torch.compile the model (slow start, no gain measured on CPU)")
    compile_mode: CompileMode = knob("default", "with --compile: default, reduce-overhead (CUDA graphs), "
                                               "max-autotune, ...")
    sync_bn: bool = knob(False, "SyncBatchNorm across processes under torchrun")
    valid_every: int = knob(1, "validate after every N-th epoch and always the last; 0 = the last only",
                            range=Range(0))


Metric = Callable[[Tensor, Tensor], Tensor]
Splitter = Callable[[nn.Module], list[tuple[str, nn.Module]]]  # a model -> its named layer groups
LearningRate = float | slice  # a slice spreads rates over the layer groups, as fastai's (`optim.spread_lr`)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class TrainingFailed(RuntimeError):
    """A fit stopped on an error it reported (a NaN loss, say)."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped a fit after a batch (`CheckpointSaver` saved it there); the message says where."""


@dataclass
class ResumePoint:
    """Where an epoch starts: its first batch and the training loss summed before it (a checkpoint's)."""

    epoch: int = 0
    batch: int = 0
    loss_sum: Tensor = field(default_factory=lambda: torch.zeros(()))  # over `batches` batches
    batches: int = 0
    optimizer: dict | None = None  # a checkpoint's optimizer state, loaded once the fit has built its optimizer
    progress: float = 0.0  # a budgeted fit's schedule position (its fraction of the time) at the checkpoint
    budget_spent_s: float = 0.0  # and the seconds of its budget spent by then


@dataclass(frozen=True)
class FineTune:
    """fastai's fine_tune in one fit: the body frozen for the first `freeze_epochs` (the head and
    BatchNorm train, the other groups at a tenth of the head's rate, as fastai's slice(lr)), then
    the whole model with the head `lr_mult` times faster than the stem."""

    freeze_epochs: int
    lr_mult: float = 100.0

    def lr_mults(self, frozen: bool, n_groups: int) -> list[float]:
        """Each layer group's multiple of the head's rate in this phase."""
        return spread_lr(slice(1.0), n_groups)[1] if frozen else even_mults(1 / self.lr_mult, n_groups)


@dataclass
class FitState:
    """Where a fit is: the loop writes it, callbacks read it (`learn.state`). A new one per fit."""

    n_epochs: int = 1
    lr_schedule: sched.Schedule = sched.constant(0.0)  # progress -> learning rate
    mom_schedule: sched.Schedule | None = None  # progress -> momentum; None: the optimizer's own
    epoch: int = 0
    start: ResumePoint = field(default_factory=ResumePoint)  # where this epoch started
    n_batches: int = 0  # training batches in this epoch
    iter: int = 0  # this batch's index in the epoch
    progress: float = 0.0  # fraction of the fit done, in [0, 1]: of its batches, or of its time under a budget
    lr: float = 0.0
    size: int = 0  # this step's training crop side, px
    loss: Tensor = field(default_factory=lambda: torch.zeros(()))  # this step's, on the device: reading it syncs
    training: bool = False
    validated: bool = False  # whether this epoch validated (see `Learner.valid_every`)
    last_metrics: dict[str, float] = field(default_factory=dict)  # NaN where this epoch skipped validation
    stop_requested: bool = False
    failure: str | None = None  # why the fit failed (it then raises TrainingFailed)
    interrupted: str | None = None  # where Ctrl-C stopped the fit (it then raises TrainingInterrupted)
    fine_tune: FineTune | None = None  # a fine-tune's phases: frozen, then unfrozen
    clock: BudgetClock | None = None  # a budgeted fit's: progress on the wall clock (n_epochs is then an estimate)
    out_of_time: bool = False  # a budgeted fit's last step is done: this epoch validates and the fit ends


class Learner:
    """Trains `model` on `dls` with `loss_func`, reporting `metrics` each epoch.

    What runs on a trained Learner takes it as an argument, so the loop imports none of it:
    `vivace.lr_finder.lr_find(learn)`, `vivace.tta.tta(learn)`, `vivace.export.export_learner(learn,
    path)`. The book's Learner (`vivace.book`) has them as methods, as fastai's does.

    Args:
        dls: a DataLoaders (train and valid loaders, vocab) from `vivace.data`.
        optimizer: a name ('sgd', 'adamw', 'ranger': `make_optimizer`) or a function(model, lr) -> optimizer.
        momentum: a named optimizer's momentum (SGD) or beta1 (AdamW, Ranger), where the schedule
            does not set it: `fit_one_cycle` cycles it, `fit_flat_cos` keeps it.
        amp: 'auto' (bf16 on CUDA and on CPUs with AMX, else fp32), 'bf16', 'fp16' or 'off':
            see `vivace.runtime.autocast_dtype`. Training and evaluation both run under it.
        compile, compile_mode: torch.compile the training model in this mode (`vivace.runtime.COMPILE_MODES`;
            'reduce-overhead' replays the training forward and backward as CUDA graphs, one per input size).
        valid_every: validate after every N-th epoch and always after the last (0: the last only).
        splitter: the model's layer groups, input to output (`vivace.models.layer_groups`: an xresnet's
            stem, body, head), which `freeze` and learning-rate slices act on; None: one group, as
            fastai's Learner without a splitter (freezing then freezes nothing).
    """

    def __init__(self, dls, model: nn.Module, loss_func: nn.Module | Callable | None = None,
                 metrics: Metric | Sequence[Metric] | None = accuracy,
                 cbs: Callback | type | Iterable[Callback | type] | None = None,
                 optimizer: OptName | Callable = "sgd", weight_decay: float = 5e-5, momentum: float = 0.9,
                 channels_last: bool = True, amp: AmpMode = "auto", compile: bool = False,
                 compile_mode: CompileMode = "default", sync_bn: bool = False, valid_every: int = 1,
                 splitter: Splitter | None = None):
        self.dls, self.device = dls, dls.device
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if sync_bn and distributed.is_distributed():
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.compile, self.compile_mode = compile, compile_mode
        self.train_model = self._training_model()
        self.eval_model = self.model  # the EMA callback evaluates its average instead
        self.loss_func = loss_func if loss_func is not None else CrossEntropy()
        self.metrics = [] if metrics is None else list(metrics) if isinstance(metrics, Sequence) else [metrics]
        self.optimizer, self.weight_decay, self.momentum, self.opt = optimizer, weight_decay, momentum, None
        self.splitter = splitter
        self.amp_dtype = runtime.autocast_dtype(self.device, amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.is_main = distributed.rank() == 0
        self.recorder, self.guard = Recorder(), NaNGuard()
        self.cbs: list[Callback] = [self.recorder, ProgressBar(), self.guard]
        self.add_cbs(cbs)
        # What the training step does besides forward/backward/step, set by the technique adapters
        # (`ProgressiveResize`, `EMA`): the crop size as a function of progress, and a weight average.
        self.size_schedule: Callable[[float], int] | None = None
        self.ema: WeightAverage | None = None
        self.valid_every = valid_every  # epochs between validations (the last epoch always validates)
        self.resume: ResumePoint | None = None  # set from a checkpoint: where the next fit starts
        # When the next budgeted fit's clock started (`train`: at the end of data preparation); None: at the fit's call.
        self.budget_started: float | None = None
        self.state = FitState(size=dls.train.size)

    # -- the book's handles -------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.dls.vocab)

    @property
    def metric_names(self) -> list[str]:
        return [getattr(m, "__name__", type(m).__name__) for m in self.metrics]

    def add_cbs(self, cbs: Callback | type | Iterable[Callback | type] | None) -> None:
        """Add callbacks; a class is instantiated with its defaults (`cbs=Mixup` as in the book)."""
        if cbs is None:
            return
        for cb in cbs if isinstance(cbs, Iterable) else [cbs]:
            self.cbs.append(cb() if isinstance(cb, type) else cb)

    def fit(self, n_epoch: int, lr: LearningRate = 1e-3) -> None:
        """Train `n_epoch` epochs at a constant learning rate (a slice: spread over the layer groups)."""
        top, mults = self._spread(lr)
        self._fit(n_epoch, sched.constant(top), None, lr_mults=mults)

    def fit_one_cycle(self, n_epoch: int, lr_max: LearningRate = 1e-3, div: float = 25.0, div_final: float = 1e5,
                      pct_start: float = 0.25, moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
                      budget_s: float = 0.0) -> None:
        """fastai's one-cycle: LR warms up then anneals while momentum does the opposite.
        `budget_s` > 0: over that many seconds instead of `n_epoch` epochs (`vivace.budget`)."""
        top, mults = self._spread(lr_max)
        self._fit(n_epoch, sched.one_cycle(top, div, div_final, pct_start), sched.one_cycle_momentum(moms, pct_start),
                  lr_mults=mults, budget_s=budget_s)

    def fit_flat_cos(self, n_epoch: int, lr: LearningRate = 1e-3, pct_start: float = 0.75,
                     div_final: float = 1e5, budget_s: float = 0.0) -> None:
        """Flat LR for pct_start of training, then cosine annealing (fastai's Ranger recipe).
        `budget_s` > 0: over that many seconds instead of `n_epoch` epochs (`vivace.budget`)."""
        top, mults = self._spread(lr)
        self._fit(n_epoch, sched.flat_cos(top, pct_start, div_final), None, lr_mults=mults, budget_s=budget_s)

    def fit_schedule(self, epochs: int, lr: float, schedule: sched.ScheduleName = "one_cycle",
                     pct_start: float = 0.25, freeze_epochs: int = 0, lr_mult: float = 100.0,
                     budget_s: float = 0.0) -> None:
        """The Recipe's schedule (`ScheduleSpec`): `fit_one_cycle`, `fit_flat_cos`, or `fine_tune`
        (when `freeze_epochs` > 0 too), whose frozen epochs count in `epochs`; over `budget_s`
        seconds instead of `epochs` when it is > 0."""
        if schedule == "fine_tune" or freeze_epochs:
            if budget_s:
                raise ValueError(f"budget_s={budget_s:g} with a fine-tune: its frozen phase is counted in epochs; "
                                 "give --epochs without --budget, or train with one_cycle or flat_cos")
            self.fine_tune(epochs - freeze_epochs, lr, freeze_epochs, lr_mult, pct_start)
        elif schedule == "flat_cos":
            self.fit_flat_cos(epochs, lr, pct_start=pct_start, budget_s=budget_s)
        else:
            self.fit_one_cycle(epochs, lr, pct_start=pct_start, budget_s=budget_s)

    def fine_tune(self, epochs: int, base_lr: float = 2e-3, freeze_epochs: int = 1, lr_mult: float = 100.0,
                  pct_start: float = 0.3, div: float = 5.0) -> None:
        """fastai's fine_tune, as one fit of `freeze_epochs + epochs` (one table, one run of checkpoints).

        First `freeze_epochs` with the body frozen (`freeze`: the head and BatchNorm train), one-cycle
        to base_lr with pct_start 0.99; then, the optimizer started afresh (fastai's `unfreeze`), the
        whole model in one-cycle at base_lr/2 for the head, `lr_mult` times less for the stem and the
        body between. A resumed fine-tune re-enters the phase of its epoch. Without a `splitter`
        the model is one group, as in fastai: nothing is frozen and the rate is not spread.
        """
        total = freeze_epochs + epochs
        at = freeze_epochs / total
        lr = sched.phases(at, sched.one_cycle(base_lr, pct_start=0.99),
                          sched.one_cycle(base_lr / 2, div, pct_start=pct_start))
        moms = sched.phases(at, sched.one_cycle_momentum(pct_start=0.99), sched.one_cycle_momentum(pct_start=pct_start))
        self.opt = None  # fastai's freeze() starts the optimizer afresh too
        self._fit(total, lr, moms, fine_tune=FineTune(freeze_epochs, lr_mult))

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """The model's named layer groups (`splitter`), input to output; one group without a splitter."""
        return self.splitter(self.model) if self.splitter else [("model", self.model)]

    def freeze(self) -> None:
        """Train only the head (and every BatchNorm, as fastai's train_bn); the optimizer starts afresh."""
        self._set_frozen(True)
        self.opt = None

    def unfreeze(self) -> None:
        """Train every layer group again; the optimizer starts afresh (as fastai's)."""
        self._set_frozen(False)
        self.opt = None

    # -- the loop ------------------------------------------------------------------------
    def _fit(self, n_epochs: int, lr_schedule: sched.Schedule, mom_schedule: sched.Schedule | None,
             validate: bool = True, lr_mults: list[float] | None = None, fine_tune: FineTune | None = None,
             budget_s: float = 0.0) -> None:
        """Train from the resume point to `n_epochs`, or, when `budget_s` > 0, until its time is spent."""
        called = time.perf_counter()  # a budget given to this call counts from here
        if self.opt is None:
            self.opt = self._make_opt()
        start, self.resume = self.resume or ResumePoint(), None
        if start.optimizer is not None:  # a checkpoint's, restored into the optimizer of this fit
            self.opt.load_state_dict(start.optimizer)
        if lr_mults is not None:
            set_lr_mults(self.opt, lr_mults)
        clock = self._budget_clock(budget_s, start, self.budget_started or called) if budget_s else None
        self.budget_started = None
        self.state = state = FitState(n_epochs, lr_schedule, mom_schedule, size=self.dls.train.size,
                                      fine_tune=fine_tune, clock=clock, progress=start.progress)
        self._emit("before_fit")
        for state.epoch in itertools.count(start.epoch) if clock else range(start.epoch, n_epochs):
            if clock:
                state.n_epochs = self._epochs_estimate(start)
            self._train_epoch(start if state.epoch == start.epoch else ResumePoint(state.epoch))
            if state.stop_requested:
                break
            if validate:
                state.validated = self._validates_now()
                state.last_metrics = self.validate() if state.validated else self._skipped_metrics()
                if clock and state.out_of_time:
                    clock.ended()  # the deadline is judged here: the final validation is in the budget
                self._emit("after_validate")
            self._emit("after_epoch")
            if state.stop_requested or state.out_of_time:
                break
        self._emit("after_fit")
        if state.failure:
            raise TrainingFailed(state.failure)
        if state.interrupted:
            raise TrainingInterrupted(state.interrupted)

    def _validates_now(self) -> bool:
        """Validate after every `valid_every`-th epoch and always after the last (0: the last only)."""
        epoch = self.state.epoch
        last = self.state.out_of_time if self.state.clock else epoch + 1 == self.state.n_epochs
        return last or (self.valid_every > 0 and (epoch + 1) % self.valid_every == 0)

    def _skipped_metrics(self) -> dict[str, float]:
        """NaN for each validation figure of an epoch that skipped validation (a blank in the table)."""
        return {name: math.nan for name in ["valid_loss", *self.metric_names]}

    def _train_epoch(self, start: ResumePoint) -> None:
        state = self.state
        self.model.train()
        state.training, state.start = True, start
        self.dls.train.set_epoch(state.epoch)
        state.n_batches = len(self.dls.train)
        if state.fine_tune:
            self._enter_phase(start)
        if state.clock:
            state.clock.new_epoch()
        self._emit("before_epoch")
        # Batches come as cached (uint8 Pictures); the step augments them at its own size.
        for state.iter, (pictures, y) in enumerate(self.dls.train.iter_from(start.batch, raw=True), start.batch):
            if state.clock is None:
                state.progress = (state.epoch + state.iter / state.n_batches) / state.n_epochs
            self._set_hyper()
            self._emit("before_batch")
            state.loss = self._train_step(pictures, y)
            if state.clock is not None:  # before the callbacks: a checkpoint saved now says where the schedule is
                state.progress, state.out_of_time = self._read_clock()
            self._emit("after_batch")
            if state.stop_requested or state.out_of_time:
                break
        state.training = False

    # -- a budgeted fit (`vivace.budget`) ------------------------------------------------
    def _budget_clock(self, budget_s: float, start: ResumePoint, started: float) -> BudgetClock:
        """The fit's clock: the budget (less what a resumed run spent) counted from `started`, training
        ending early enough for the final validation, timed now."""
        budget = Budget(budget_s, spent_before_s=start.budget_spent_s, started=started)
        clock = BudgetClock(budget, reserve_s=self._final_validation_s(), start_progress=start.progress)
        if clock.end <= clock.fit_started:
            raise ValueError(f"a budget of {format_duration(budget_s)} leaves no time to train: "
                             f"{format_duration(budget.spent())} of it spent, and the final validation takes "
                             f"~{clock.reserve_s:.0f} s here; give a longer --budget")
        return clock

    @torch.no_grad()
    def _final_validation_s(self) -> float:
        """Seconds the final validation will take: a few validation batches timed (the first warms
        up), scaled to all of them, plus a tenth for safety. The batches timed count in the budget."""
        model, n_batches = self.eval_model.eval(), len(self.dls.valid)
        batches, seconds = iter(self.dls.valid), []
        try:
            last = time.perf_counter()
            for x, _ in itertools.islice(batches, 3):
                with self.autocast():
                    model(x)
                runtime.synchronize(self.device)
                now = time.perf_counter()
                seconds.append(now - last)
                last = now
        finally:
            batches.close()
        per_batch = min(seconds[1:]) if len(seconds) > 1 else seconds[0] if seconds else 0.0
        return 1.1 * per_batch * n_batches

    def _read_clock(self) -> tuple[float, bool]:
        """The schedule's progress after this step and whether the budget is spent (another step
        would not end before training's end), as rank 0 sees them: under torchrun every rank stops
        on the same step."""
        clock = self.state.clock
        clock.step_done()
        out_of_time = not clock.next_step_fits()
        progress, out_of_time = distributed.from_main([clock.progress(), float(out_of_time)])
        return (1.0, True) if out_of_time else (progress, False)

    def _epochs_estimate(self, start: ResumePoint) -> int:
        """How many epochs a budgeted fit will have, from its progress so far (0: not known yet)."""
        state = self.state
        done = state.epoch + (start.batch / max(len(self.dls.train), 1) if state.epoch == start.epoch else 0.0)
        if state.progress <= 0.02 or done <= 0:
            return 0
        return max(state.epoch + 1, math.ceil(done / state.progress))

    def _train_step(self, pictures: Pictures, y: Tensor) -> Tensor:
        """One training step, in data-flow order; returns the loss (on the device: no sync)."""
        size = self.size_schedule(self.state.progress) if self.size_schedule else self.dls.train.size
        self.state.size = size
        x = self.dls.train.transform(pictures, size)  # crop, flip, warp, lighting; normalize
        x, y = self._mix(x, y)  # Mixup / CutMix: soft targets
        with self.autocast():
            loss = self.loss_func(self.train_model(x), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # the scaler is a no-op unless fp16
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach()

    def _mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The callbacks' one data hook, `transform_batch` (Mixup, CutMix), in their event order."""
        for cb in self._in_order():
            x, y = cb.transform_batch(self, x, y)
        return x, y

    def _set_hyper(self) -> None:
        state = self.state
        state.lr = state.lr_schedule(state.progress)
        set_hyper(self.opt, state.lr, state.mom_schedule(state.progress) if state.mom_schedule else None)

    def _enter_phase(self, start: ResumePoint) -> None:
        """A fine-tune's phase at this epoch: the body frozen, or all of it at spread rates."""
        plan, epoch = self.state.fine_tune, self.state.epoch
        frozen = epoch < plan.freeze_epochs
        self._set_frozen(frozen)
        if plan.freeze_epochs > 0 and epoch == plan.freeze_epochs and start.batch == 0:
            self.opt = self._make_opt()  # fastai's unfreeze() starts the optimizer afresh
        set_lr_mults(self.opt, plan.lr_mults(frozen, len(self.opt.param_groups) // 2))

    def _set_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) every layer group but the head, BatchNorm layers aside (fastai's
        train_bn: their statistics and affine weights keep adapting to the new data)."""
        *body, _ = self.layer_groups()
        params = [p for _, part in body for m in part.modules() if not isinstance(m, BATCH_NORMS)
                  for p in m.parameters(recurse=False)]
        changed = any(p.requires_grad == frozen for p in params)
        for p in params:
            p.requires_grad_(not frozen)
        if changed:  # DDP registers the parameters that need gradients when it wraps the model
            self.train_model = self._training_model()

    def _training_model(self) -> nn.Module:
        """What training steps call: the model under DDP (torchrun) and torch.compile when asked.
        Evaluation uses the plain model, whose weights are the same on every rank."""
        model = distributed.wrap_model(self.model)
        return torch.compile(model, mode=runtime.compile_mode(self.compile_mode)) if self.compile else model

    def _spread(self, lr: LearningRate) -> tuple[float, list[float] | None]:
        """The top rate, and each layer group's multiple of it where `lr` is a slice."""
        top, mults = spread_lr(lr, len(self.layer_groups()))
        return top, mults if isinstance(lr, slice) else None

    def _make_opt(self):
        if callable(self.optimizer):
            return self.optimizer(self.model, 1e-3)
        return make_optimizer(self.model, self.optimizer, weight_decay=self.weight_decay, momentum=self.momentum,
                              parts=[part for _, part in self.layer_groups()])

    def _in_order(self) -> list[Callback]:
        return sorted(self.cbs, key=lambda c: c.order)

    def _emit(self, event: str) -> None:
        for cb in self._in_order():
            getattr(cb, event)(self)

    # -- what callbacks may ask ------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to stop after the current batch (or epoch, when asked in after_epoch)."""
        self.state.stop_requested = True

    def fail(self, message: str) -> None:
        """Stop the fit and record why: the fit then ends raising TrainingFailed(message)."""
        self.state.failure = message
        self.request_stop()

    def interrupt(self, message: str) -> None:
        """Stop the fit after this batch because the user asked: it then ends raising TrainingInterrupted."""
        self.state.interrupted = message
        self.request_stop()

    def log(self, message: str) -> None:
        """Print on the main process only."""
        if self.is_main:
            print(message, flush=True)

    def autocast(self):
        """Autocast context for the configured mixed precision, or a no-op."""
        return runtime.autocast(self.device, self.amp_dtype)

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def get_preds(self, dl=None) -> tuple[Tensor, Tensor]:
        """Logits (N, C) and labels (N,) over a loader (default: validation), on the CPU."""
        model = self.eval_model.eval()
        distributed.sync_buffers(model)  # every rank evaluates rank 0's BatchNorm statistics
        preds, targets = [], []
        for x, y in dl if dl is not None else self.dls.valid:
            with self.autocast():
                preds.append(model(x).float())
            targets.append(y)
        # Under torchrun each rank scored its shard of the validation set: gather them all.
        preds, targets = distributed.gather_all(torch.cat(preds)), distributed.gather_all(torch.cat(targets))
        return preds.cpu(), targets.cpu()

    def validate(self, dl=None) -> dict[str, float]:
        """Validation loss and every metric over the whole validation set."""
        preds, targets = self.get_preds(dl)
        out = {"valid_loss": float(self.loss_func(preds, targets))}
        for name, metric in zip(self.metric_names, self.metrics):
            out[name] = float(metric(preds, targets))
        return out
