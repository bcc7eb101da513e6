"""Checkpoints: one safetensors file per checkpoint, tensors inside, JSON state in its metadata.

A single file can be written atomically (temp file, then rename), so a run killed at any moment
leaves either the previous checkpoint or the new one, never half of each. Nothing is pickled.
The metadata's `sha256` (of the state JSON and every tensor, as bundles carry) is checked on load:
a damaged checkpoint is refused, never resumed from.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import distributed
from .callbacks import Callback
from .learner import ResumePoint
from .files import atomic_write, content_hash, remove_stale_temps

FORMAT = "vivace-checkpoint-1"
WeightsChoice = Literal["final", "best"]
# Which checkpoint file holds each choice (CheckpointSaver): `last` is rewritten after every epoch,
# so at the end of the fit it holds the final weights; `best` the epoch with the best accuracy.
WEIGHT_FILES: dict[str, str] = {"final": "last.safetensors", "best": "best.safetensors"}


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested dicts/lists into a JSON skeleton and a flat {key: tensor} map."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "tensor"
        return {"__tensor__": key}, {key: obj.detach().cpu().contiguous()}
    if isinstance(obj, dict):
        skeleton, tensors = {}, {}
        for k, v in obj.items():
            # JSON keys are strings; remember int keys (optimizer state is keyed by param index).
            name = f"__int__{k}" if isinstance(k, int) else str(k)
            skeleton[name], found = flatten_state(v, f"{prefix}.{name}" if prefix else name)
            tensors.update(found)
        return skeleton, tensors
    if isinstance(obj, (list, tuple)):
        skeleton, tensors = [], {}
        for i, v in enumerate(obj):
            item, found = flatten_state(v, f"{prefix}.{i}")
            skeleton.append(item)
            tensors.update(found)
        return skeleton, tensors
    return obj, {}


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of flatten_state."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            return tensors[skeleton["__tensor__"]]
        return {(int(k[7:]) if k.startswith("__int__") else k): unflatten_state(v, tensors)
                for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (nested dicts of tensors and JSON values) to `path` atomically."""
    skeleton, tensors = flatten_state(state)
    # safetensors refuses tensors sharing memory; clone the rare views.
    tensors = {k: v.clone() for k, v in tensors.items()}
    state_json = json.dumps(skeleton)
    metadata = {"format": FORMAT, "state": state_json, "sha256": content_hash(state_json, tensors)}
    with atomic_write(path, fsync=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train first, or drop --resume")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable checkpoint ({err})") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    # Checkpoints written before the digest existed have none: they load unchecked.
    if "sha256" in meta and content_hash(meta.get("state", ""), tensors) != meta["sha256"]:
        raise ValueError(f"{path} failed its integrity check (sha256 mismatch): the file was damaged "
                         "after it was written; delete it to start the run again, or copy best.safetensors "
                         "over it to resume from the best epoch")
    try:
        state = unflatten_state(json.loads(meta["state"]), tensors)
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} has no readable training state in its metadata ({err!r})") from err
    _check_position(path, state)
    return state


def load_on_main(path: Path) -> dict[str, Any]:
    """`load_checkpoint` by rank 0 alone, its state sent to every rank (under torchrun the other
    machines may not hold the file). On the CPU: a tensor keeps its device through the broadcast,
    and `restore_learner` copies each to where it belongs."""
    return distributed.main_answer(lambda: load_checkpoint(path))


def load_position(path: Path) -> dict[str, int]:
    """A learner checkpoint's position alone, from its header: no tensor is read or checksummed
    (a resume does both when it loads the checkpoint)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        skeleton = json.loads(meta["state"])
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable checkpoint ({err!r})") from err
    require_fields(path, skeleton, ("position",))
    _check_position(path, skeleton)
    return skeleton["position"]


def _check_position(path: Path, state: Any) -> None:
    """A learner checkpoint's position must be two non-negative integers (epoch, batch)."""
    if not isinstance(state, dict) or "position" not in state:
        return  # a plain state saved by save_checkpoint, not a learner's
    pos = state["position"]
    for key in ("epoch", "batch"):
        value = pos.get(key) if isinstance(pos, dict) else None
        if type(value) is not int or value < 0:
            raise ValueError(f"{path}: checkpoint field position.{key} must be an integer >= 0, "
                             f"got {value!r}; the file was edited or damaged: delete it to start again")


# What `restore_learner` reads: every learner checkpoint has held these since the first.
RESUME_FIELDS = ("position", "model", "optimizer", "scaler", "rng.torch", "data", "callbacks", "epoch_loss.sum",
                 "epoch_loss.batches")


def require_fields(path: Path, state: dict[str, Any], names: Sequence[str]) -> None:
    """ValueError naming the file and the first of `names` (dotted: `rng.torch`) missing from `state`."""
    for name in names:
        node: Any = state
        for key in name.split("."):
            if not isinstance(node, dict) or key not in node:
                raise ValueError(f"{path}: checkpoint field {name} is missing; the file was edited or written by "
                                 "another program: delete it to start the run again")
            node = node[key]


def position_in_run(path: Path, position: dict[str, int], epochs: int | None, batches: int | None = None) -> bool:
    """Whether a checkpoint's position is the end of a run of `epochs` (None: a budgeted run, which ends
    when its schedule's progress reaches 1); ValueError naming the field when it lies beyond the run:
    past its epochs, or past the `batches` of one of its epochs."""
    epoch, batch = position["epoch"], position["batch"]
    # batch == batches: saved in-epoch after the epoch's last batch (the epoch then only validates).
    if batches is not None and batch > batches:
        raise ValueError(f"{path}: checkpoint field position.batch={batch} is past the {batches} batches of an "
                         "epoch of this data at this batch size: the file was edited, or the data or batch size "
                         "changed; resume with the run's data and batch size, or delete the file to start again")
    if epochs is None:
        progress = position.get("progress", 0.0)
        if type(progress) not in (int, float) or not 0 <= progress <= 1:
            raise ValueError(f"{path}: checkpoint field position.progress must be a number in [0, 1], got "
                             f"{progress!r}; the file was edited or damaged: delete it to start again")
        return progress >= 1
    if epoch > epochs or (epoch == epochs and batch > 0):
        raise ValueError(f"{path}: checkpoint field position.epoch={epoch} is past the recipe's epochs={epochs}: "
                         f"pass --epochs N (N > {epoch}) to train on from it, or delete the file to start again")
    return epoch == epochs


def check_classes(path: Path, saved: Sequence[str] | None, vocab: Sequence[Any]) -> None:
    """A resumed model goes on predicting the classes it was trained on: ValueError when the data's differ."""
    vocab = [str(v) for v in vocab]
    if saved is None or list(saved) == vocab:  # None: a checkpoint saved before the vocab was recorded
        return
    raise ValueError(f"{path} was trained on {len(saved)} classes, the data now has {len(vocab)} "
                     f"({class_change(list(saved), vocab)}): resume on the data it was trained on, or train these "
                     "classes into another --out")


def class_change(model_vocab: list[str], data_vocab: list[str]) -> str:
    """How the data's classes differ from the model's, in a few words."""
    gone = [name for name in model_vocab if name not in data_vocab]
    new = [name for name in data_vocab if name not in model_vocab]
    if not gone and not new:
        return "the same names in another order"
    parts = [f"not in the data: {_few(gone)}" if gone else "", f"new: {_few(new)}" if new else ""]
    return "; ".join(part for part in parts if part)


def _few(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def learner_state(learn, epoch: int, batch: int) -> dict[str, Any]:
    """Everything needed to continue a fit at (epoch, batch) exactly as if never interrupted."""
    state = {
        "position": {"epoch": epoch, "batch": batch, **budget_position(learn)},
        "model": learn.model.state_dict(),
        "optimizer": learn.opt.state_dict(),
        "scaler": learn.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "data": learn.dls.state_dict(),
        "callbacks": {f"{i}.{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(learn.cbs)},
        "epoch_loss": {"sum": learn.recorder.loss_sum.detach().cpu(), "batches": learn.recorder.n_seen},
        # What a run started from this one (`--init RUN`) inherits besides the weights.
        "vocab": [str(v) for v in learn.dls.vocab],
        "normalize": learn.dls.normalize.as_dict() if learn.dls.normalize is not None else None,
    }
    if learn.eval_model is not learn.model:  # EMA: the weights that were evaluated, for export
        state["eval_model"] = learn.eval_model.state_dict()
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    return state


def budget_position(learn) -> dict[str, float]:
    """Where a budgeted fit is (`vivace.budget`): its schedule's progress (1: the budget is spent,
    the run finished) and the seconds of its budget spent; nothing for a fit counted in epochs."""
    clock = learn.state.clock
    if clock is None:
        return {}
    return {"progress": learn.state.progress, "budget_spent_s": round(clock.budget.spent(), 3)}


def restore_learner(learn, state: dict[str, Any]) -> None:
    """Load a learner_state into `learn`; its next fit call continues from the saved position (and
    loads the optimizer state into the optimizer it builds: its groups depend on the fit)."""
    learn.model.load_state_dict(state["model"])
    if state["scaler"]:
        learn.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    learn.dls.load_state_dict(state["data"])
    for i, cb in enumerate(learn.cbs):
        cb.load_state_dict(state["callbacks"].get(f"{i}.{type(cb).__name__}", {}))
    pos = state["position"]
    learn.resume = ResumePoint(pos["epoch"], pos["batch"], optimizer=state["optimizer"],
                               progress=float(pos.get("progress", 0.0)),
                               budget_spent_s=float(pos.get("budget_spent_s", 0.0)))
    if pos["batch"] > 0:  # resuming mid-epoch: the epoch's train loss continues its running sum
        learn.resume.loss_sum = state["epoch_loss"]["sum"]
        learn.resume.batches = int(state["epoch_loss"]["batches"])


class CheckpointSaver(Callback):
    """Writes `last.safetensors` each epoch (and every `checkpoint_every_min` inside one) and `best`.

    The best checkpoint follows `monitor` (higher is better unless it names a loss or error).
    Nothing is written after a failure, so the last good checkpoint survives a NaN.
    The first Ctrl-C (SIGINT) stops the fit after the current batch, saved as `last`, so
    `--resume` continues exactly there; a second one interrupts at once, as Python does.
    """

    order = 20

    def __init__(self, directory: Path, monitor: str = "accuracy", checkpoint_every_min: float = 0.0):
        self.directory, self.monitor, self.every_s = Path(directory), monitor, checkpoint_every_min * 60
        self.sign = -1.0 if "loss" in monitor or "error" in monitor else 1.0
        self.best: float | None = None
        self.last_save = time.monotonic()

    def before_fit(self, learn) -> None:
        self.last_save = time.monotonic()
        if learn.is_main:  # a run killed mid-write left a temp file (34 MB for a small model)
            remove_stale_temps(self.directory)
        self._catch_interrupts(learn)

    def _catch_interrupts(self, learn) -> None:
        """Turn the first SIGINT into a stop after this batch. Not under torchrun: every rank would
        stop at its own batch, and torchrun already ends all ranks on Ctrl-C."""
        self.interrupt_asked, self.previous_handler = False, None
        if distributed.is_distributed() or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can be set only from the main thread
        self.previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        self.interrupt_asked = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    def after_fit(self, learn) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
            self.previous_handler = None

    def after_batch(self, learn) -> None:
        if self.interrupt_asked and not learn.state.failure:
            epoch, batch, where = learn.state.epoch, learn.state.iter + 1, self.directory / WEIGHT_FILES["final"]
            if learn.guard.window_is_finite():
                self._save(learn, "last", epoch, batch)
                saved = f"saved {where} there"
            else:  # the loss went NaN in the last few batches: keep the checkpoint before it
                saved = f"kept {where} from before (the loss was not finite)"
            learn.interrupt(f"interrupted at epoch {epoch + 1}, batch {batch} of {learn.state.n_batches}; {saved}")
            return
        if self.every_s and not learn.state.failure and time.monotonic() - self.last_save >= self.every_s:
            # The guard looks at the loss only every few batches: never save a NaN it has not seen yet.
            if learn.guard.window_is_finite():
                self._save(learn, "last", learn.state.epoch, learn.state.iter + 1)

    def after_epoch(self, learn) -> None:
        if learn.state.failure:
            return
        self._save(learn, "last", learn.state.epoch + 1, 0)
        value = learn.state.last_metrics.get(self.monitor, learn.state.last_metrics.get("valid_loss"))
        validated = value is not None and not math.isnan(value)  # NaN: the epoch skipped validation
        if validated and (self.best is None or self.sign * value > self.sign * self.best):
            self.best = value
            self._save(learn, "best", learn.state.epoch + 1, 0)

    def _save(self, learn, name: str, epoch: int, batch: int) -> None:
        if learn.is_main:
            save_checkpoint(self.directory / f"{name}.safetensors", learner_state(learn, epoch, batch))
        self.last_save = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
