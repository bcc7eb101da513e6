"""Events: callbacks observe the loop through a few named events and may ask it to stop.

Events, in order: before_fit, then per epoch before_epoch, per batch (before_batch, the
training step, after_batch), after_validate, after_epoch; finally after_fit. The step
(`Learner._train_step`) calls `transform_batch`, the single hook that may change data (Mixup,
CutMix), between augmentation and the forward pass. Techniques that change the step itself
configure it in before_fit instead of acting per batch: `ProgressiveResize` sets
`learn.size_schedule`, `EMA` sets `learn.ema` (a `WeightAverage`).
"""
from __future__ import annotations

import copy
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

import torch
from torch import Tensor

from . import distributed
from . import progress
from .mixing import check_alpha, cutmix, mixup
from .progress import ProgressFront
from .schedule import SizeSchedule

if TYPE_CHECKING:
    from .learner import Learner


class Callback:
    """Base class: every event is a no-op; `order` sorts callbacks (lower runs first)."""

    order: int = 0

    def before_fit(self, learn: Learner) -> None: ...
    def before_epoch(self, learn: Learner) -> None: ...
    def before_batch(self, learn: Learner) -> None: ...
    def after_batch(self, learn: Learner) -> None: ...
    def after_validate(self, learn: Learner) -> None: ...
    def after_epoch(self, learn: Learner) -> None: ...
    def after_fit(self, learn: Learner) -> None: ...

    def transform_batch(self, learn: Learner, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Return the (possibly changed) training batch; the default leaves it alone."""
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint so a resumed run continues exactly (RNG states, counters)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Recorder(Callback):
    """Collects per-epoch rows (train loss, valid loss, metrics, time) and prints the book's table."""

    order = -20

    def __init__(self, print_table: bool = True):
        self.print_table = print_table
        self.rows: list[dict[str, float]] = []
        self.lrs: list[float] = []
        self.sizes: list[int] = []

    def before_fit(self, learn: Learner) -> None:
        self.widths = [max(len(h), 10) for h in self._header(learn)]
        if self.print_table and not self.rows:
            learn.log("  ".join(h.ljust(w) for h, w in zip(self._header(learn), self.widths)).rstrip())

    def before_epoch(self, learn: Learner) -> None:
        self.start = time.perf_counter()
        # Summed on the device: no host sync per batch. Restored when resuming mid-epoch.
        self.loss_sum = learn.state.start.loss_sum.to(learn.device)
        self.n_seen = learn.state.start.batches

    def after_batch(self, learn: Learner) -> None:
        self.loss_sum = self.loss_sum + learn.state.loss.float()
        self.n_seen += 1
        self.lrs.append(learn.state.lr)
        self.sizes.append(learn.state.size)

    def after_validate(self, learn: Learner) -> None:
        row = {"epoch": float(learn.state.epoch), "train_loss": (self.loss_sum / max(self.n_seen, 1)).item()}
        row.update(learn.state.last_metrics)
        row["time"] = time.perf_counter() - self.start
        self.rows.append(row)
        if self.print_table:
            learn.log("  ".join(_fmt(k, v).ljust(w) for (k, v), w in zip(row.items(), self.widths)).rstrip())

    def _header(self, learn: Learner) -> list[str]:
        return ["epoch", "train_loss", "valid_loss", *learn.metric_names, "time"]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "lrs": self.lrs, "sizes": self.sizes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self.lrs, self.sizes = state["rows"], state["lrs"], state["sizes"]


def _fmt(key: str, value: float) -> str:
    if key == "epoch":
        return str(int(value))
    if key == "time":
        return f"{int(value) // 60:02d}:{int(value) % 60:02d}"
    return "" if math.isnan(value) else f"{value:.6f}"  # NaN: an epoch that skipped validation


class ProgressBar(Callback):
    """A live bar per epoch: epoch i/N, batches done, loss, images/s and the epoch's ETA.

    Where it shows is `enabled` (True: always, False: never), else the VIVACE_PROGRESS
    environment variable: `on`, `off` or `auto` (the default). Auto shows a bar in a terminal
    (stderr a tty) and in a Jupyter kernel (tqdm's widget with ipywidgets installed, else a text
    bar redrawn on one line), and none in a pipe or CI, where the Recorder's one line per epoch
    is the progress. `file` sends a text bar to that stream instead of stderr. A display error
    never stops training: it is reported once on stderr and the bar stays off from then on.
    """

    order = 10
    loss_every = 10  # batches between loss reads: `.item()` waits for the device
    text_format = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} batches [{elapsed}<{remaining}{postfix}]"

    def __init__(self, enabled: bool | None = None, file: TextIO | None = None):
        self.mode = progress.progress_mode(enabled)
        self.file = file
        self.front: ProgressFront = "none"
        self.bar = None
        self.broken = False

    def before_fit(self, learn: Learner) -> None:
        if not learn.is_main or self.broken:
            self.front = "none"
            return
        stream = self.file if self.file is not None else sys.stderr
        in_kernel = self.file is None and progress.in_notebook_kernel()
        self.front = progress.choose_front(self.mode, progress.is_tty(stream), in_kernel, progress.widgets_available())

    def before_epoch(self, learn: Learner) -> None:
        self._close()
        self.start, self.n_images = time.perf_counter(), 0

    def before_batch(self, learn: Learner) -> None:
        # Opened at the first batch: progressive resizing may have changed the batch count.
        if self.front != "none" and learn.state.iter == learn.state.start.batch:
            self._safely(lambda: self._open(learn))

    def after_batch(self, learn: Learner) -> None:
        if self.bar is None:
            return
        self.n_images += learn.dls.train.batch_size * learn.dls.train.world_size
        done = learn.state.iter + 1 - learn.state.start.batch
        postfix = None
        if (done - 1) % self.loss_every == 0:
            loss = learn.state.loss.item()  # waits for the device: the images since the last read are done
            now = time.perf_counter()
            rate = self.n_images / max(now - self.start, 1e-9)
            postfix = f"loss {loss:.4f}, {rate:.0f} img/s"
            self.start, self.n_images = now, 0  # the next rate covers the next window of batches
        self._safely(lambda: self._advance(postfix))
        if learn.state.iter + 1 >= learn.state.n_batches:
            self._close()  # before validation, so the epoch's table row prints on a clean line

    def after_epoch(self, learn: Learner) -> None:
        self._close()

    after_fit = after_epoch

    def _open(self, learn: Learner) -> None:
        desc = f"epoch {learn.state.epoch + 1}/{learn.state.n_epochs}"
        if self.front == "widget":
            from tqdm.notebook import tqdm as widget_tqdm
            self.bar = widget_tqdm(total=learn.state.n_batches, initial=learn.state.start.batch, desc=desc, leave=False)
            return
        from tqdm import tqdm
        self.bar = tqdm(total=learn.state.n_batches, initial=learn.state.start.batch, desc=desc, leave=False,
                        file=self.file if self.file is not None else sys.stderr, bar_format=self.text_format)

    def _advance(self, postfix: str | None) -> None:
        self.bar.update(1)
        if postfix is not None:
            self.bar.set_postfix_str(postfix)

    def _close(self) -> None:
        if self.bar is not None:
            self._safely(self.bar.close)
            self.bar = None

    def _safely(self, show: Callable[[], None]) -> None:
        """Run a display step; if it raises, report it once and turn the bar off for good."""
        try:
            show()
        except Exception as err:  # display only: nothing the bar does may take training down
            if self.bar is not None:
                self.bar.disable = True  # its close() and __del__ then draw nothing more
            self.bar, self.front, self.broken = None, "none", True
            _report(f"progress bar disabled: {type(err).__name__}: {err}")


def _report(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr itself is what broke: nowhere left to say it
        pass


CHECK_EVERY = 32  # batches between the guard's looks at the loss: each look is a CPU-GPU sync point
EXPLODE_FACTOR = 10.0  # a healthy run's loss (label smoothing and Mixup included) stays far below this


class NaNGuard(Callback):
    """Stops the fit when training diverges, naming where and suggesting a fix.

    Diverged means: a non-finite training loss; a training loss that exploded, i.e. its mean over
    the batches since the last look exceeds EXPLODE_FACTOR x the larger of the first batch's loss
    and ln(n_classes) (a uniform guess's loss); or a non-finite validation loss. The training loss
    is summed on the device and looked at every `check_every` batches and at the end of each epoch,
    so a problem at batch k is caught by batch k + check_every - 1 without a sync per batch.
    """

    order = -10

    def __init__(self, check_every: int = CHECK_EVERY, explode_factor: float = EXPLODE_FACTOR):
        self.check_every, self.explode_factor = check_every, explode_factor
        self.first_loss: Tensor | float | None = None  # a device tensor until the first look
        self.window_sum, self.window_start, self.window_len = torch.zeros(()), 0, 0

    def before_epoch(self, learn: Learner) -> None:
        self._open_window(learn.device, learn.state.start.batch)

    def after_batch(self, learn: Learner) -> None:
        if self.first_loss is None:
            self.first_loss = learn.state.loss.float()
        self.window_sum += learn.state.loss.float()  # on the device: no sync
        self.window_len += 1
        if self.window_len >= self.check_every or learn.state.iter + 1 == learn.state.n_batches:
            self._look(learn)

    def after_validate(self, learn: Learner) -> None:
        loss = learn.state.last_metrics["valid_loss"]
        if learn.state.validated and not math.isfinite(loss):
            learn.fail(f"the validation loss is {loss} after epoch {learn.state.epoch}: the model's outputs "
                       f"are not finite; {_advice(learn)}")

    def after_fit(self, learn: Learner) -> None:
        if self.window_len and not learn.state.failure:  # a fit stopped early, mid-window
            self._look(learn)

    def window_is_finite(self) -> bool:
        """Whether every training loss since the last look is finite (a sync: for savers only)."""
        return bool(torch.isfinite(self.window_sum))

    def _look(self, learn: Learner) -> None:
        mean, where = self._window_mean(), f"epoch {learn.state.epoch}, batches {self.window_start}-{learn.state.iter}"
        if not math.isfinite(mean):
            learn.fail(f"the training loss became {mean} in {where}; {_advice(learn)}")
        elif mean > self.explode_factor * self._start_loss(learn.n_classes):
            learn.fail(f"the training loss exploded to {mean:.3g} in {where}, over {self.explode_factor:g}x "
                       f"its start ({self._start_loss(learn.n_classes):.3g}); {_advice(learn)}")
        self._open_window(learn.device, learn.state.iter + 1)

    def _window_mean(self) -> float:
        # The sync point. Under torchrun every rank looks at the same batch and gets the same numbers.
        sums = [self.window_sum] + ([self.first_loss] if isinstance(self.first_loss, Tensor) else [])
        values = distributed.mean_all(torch.stack(sums)).tolist()
        if isinstance(self.first_loss, Tensor):
            self.first_loss = values[1]
        return values[0] / self.window_len

    def _start_loss(self, n_classes: int) -> float:
        """The loss training starts from: the first batch's, and at least a uniform guess's."""
        uniform = math.log(max(n_classes, 2))
        return max(self.first_loss, uniform) if math.isfinite(self.first_loss) else uniform

    def _open_window(self, device: torch.device, first_batch: int) -> None:
        self.window_sum, self.window_start, self.window_len = torch.zeros((), device=device), first_batch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"first_loss": None if self.first_loss is None else float(self.first_loss)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_loss = state.get("first_loss")


def _advice(learn: Learner) -> str:
    """What to try next, from the learning-rate schedule the fit ran."""
    peak = max(learn.state.lr_schedule(i / 100) for i in range(101))
    if not math.isfinite(peak):
        return f"the learning rate is {peak}: give a finite, positive one (--lr)"
    amp = ", or turn mixed precision off (--amp off)" if learn.amp_dtype is not None else ""
    if peak <= 0:  # the weights never moved: the inputs, the model or the loss make the NaN
        return f"the learning rate is {peak:g}, so check the inputs, the model and the loss{amp}"
    return f"lower the learning rate (it peaks at {peak:.3g}: try --lr {peak / 10:.3g}){amp}"


class EarlyStopping(Callback):
    """Stops when `monitor` has not improved for `patience` epochs."""

    def __init__(self, monitor: str = "valid_loss", patience: int = 3, min_delta: float = 0.0):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = -1.0 if "loss" in monitor or "error" in monitor else 1.0
        self.best, self.wait = None, 0

    def after_epoch(self, learn: Learner) -> None:
        if math.isnan(learn.state.last_metrics[self.monitor]):  # this epoch skipped validation
            return
        value = self.sign * learn.state.last_metrics[self.monitor]
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            learn.log(f"early stop: {self.monitor} did not improve for {self.patience} epochs")
            learn.request_stop()


class StopAfter(Callback):
    """Stops after a fixed number of training batches (for probes and tests)."""

    def __init__(self, n_batches: int):
        self.n_batches, self.seen = n_batches, 0

    def after_batch(self, learn: Learner) -> None:
        self.seen += 1
        if self.seen >= self.n_batches:
            learn.request_stop()


class ProgressiveResize(Callback):
    """Ramps the training crop size with progress; the LR schedule runs on unbroken.

    It configures the step: `learn.size_schedule`, from which each training step takes its crop
    size (the loader's own size, the final one, is never changed). With `scale_batch`, the batch
    size grows as the size shrinks, set per epoch, to keep memory per batch flat.
    """

    order = -30

    def __init__(self, schedule: SizeSchedule, scale_batch: bool = False):
        self.schedule, self.scale_batch = schedule, scale_batch

    def before_fit(self, learn: Learner) -> None:
        self.base_bs = learn.dls.train.batch_size
        learn.size_schedule = self.schedule

    def before_epoch(self, learn: Learner) -> None:
        if self.scale_batch:
            size = self.schedule(learn.state.epoch / learn.state.n_epochs)
            learn.dls.train.set_batch_size(int(self.base_bs * (self.schedule.final_px / size) ** 2))

    def after_fit(self, learn: Learner) -> None:
        learn.size_schedule = None
        if self.scale_batch:
            learn.dls.train.set_batch_size(self.base_bs)


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
    """

    order = -5

    def __init__(self, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in (0, 1)")
        self.decay = decay
        self.average: WeightAverage | None = None
        self.saved: dict[str, Tensor] | None = None  # weights from a checkpoint, until before_fit

    def before_fit(self, learn: Learner) -> None:
        if self.average is None:
            self.average = WeightAverage(learn.model, self.decay)
            if self.saved is not None:
                self.average.model.load_state_dict(self.saved)
        learn.ema, learn.eval_model = self.average, self.average.model

    def after_fit(self, learn: Learner) -> None:
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

    def transform_batch(self, learn, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
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

    def transform_batch(self, learn, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mixup or CutMix a training batch; anything else passes through."""
        if not learn.state.training:
            return x, y
        use_cutmix = float(torch.rand(1, generator=self.generator)) < self.switch_prob  # CPU draw
        if use_cutmix:
            return cutmix(x, y, learn.n_classes, self.cutmix_alpha, self.generator)
        return mixup(x, y, learn.n_classes, self.mixup_alpha, self.generator)
