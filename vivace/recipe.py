"""The one config: a `Recipe` of small specs, the run settings beside it, and named presets.

A Recipe is what is trained. Its fields come in specs, each the keyword arguments of the
function that uses them, under the same names, so a field reaches its use unrenamed:

    DataSpec      -> make_dataloaders(**recipe.kwargs(DataSpec), augment=...)   vivace/data
    AugmentSpec   -> TrainAugment(size_px, **...)                                vivace/augment.py
    ModelSpec     -> create_model(**...)                                         vivace/models
    InitSpec      -> start_from(model, **..., vocab=)                            vivace/transfer.py
    OptimizerSpec -> Learner(..., **...) -> make_optimizer                       vivace/optim.py
    StepSpec      -> Learner(..., **...)                                         vivace/learner.py
    ScheduleSpec  -> learn.fit_schedule(**...)                                   vivace/schedule.py
    LossSpec      -> make_loss(**..., multi_label=)                              vivace/losses.py
    MetricSpec    -> make_metrics(**..., multi_label=)                           vivace/metrics.py
    TechniqueSpec -> technique_callbacks(**..., size_px=, seed=)                 vivace/techniques.py
    ScalingSpec   -> device_batch(device, batch_size, lr, optimizer, **...)      here

Each field carries its help, its range or choices (`vivace.flags.knob`), and older names that
still work as flags, make_recipe keywords and config.json keys. How a run is carried out (its
folder, resume or overwrite, repeats, threads, workers, timeouts) is a `TrainOptions`, never
saved in config.json. `resolve` applies the device rules and the validation view's `auto`s;
`describe` prints the result (`vivace train --print-recipe`, each run's recipe.txt).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from .augment import AugmentSpec
from .budget import format_duration
from .data import STATS_NAMES, DataSpec, eval_batch_size
from .data.datasets import DATASETS
from .flags import Range, check_fields, knob
from .records import read_json_object
from .learner import StepSpec
from .losses import LossSpec
from .metrics import MetricSpec
from .models import MODELS, ModelSpec, create_model, layer_groups
from .normalize import parse_stats
from .optim import OptimizerSpec, even_mults, spread_lr
from .runtime import autocast_dtype
from .schedule import ScheduleSpec
from .techniques import TechniqueSpec
from .tracking import require_tensorboard
from .transfer import InitSpec, inherited_stats
from .views import resolve_valid_view

LrScaling = Literal["auto", "linear", "sqrt", "off"]
MAX_SEED = 2**32 - 1  # numpy's seeds stop here (torch's go to 2**64 - 1); --runs N uses seed .. seed + N - 1


@dataclass
class ScalingSpec:
    """How the batch and lr change on a CUDA device: `device_batch`'s keyword arguments."""

    cuda_batch_size: int = knob(0, "batch size on a CUDA device, where a larger batch keeps the GPU busy; 0 = "
                                   "batch_size. lr follows by --lr-scaling; an explicit --batch-size wins",
                                aliases=("cuda_bs",), range=Range(0))
    lr_scaling: LrScaling = knob("auto", "how lr follows cuda_batch_size: linear, sqrt or off; auto = linear for sgd, "
                                         "sqrt for adamw and ranger (timm's rule)")


# The specs in data-flow order. A dataclass takes the fields of its *last* base first, so
# Recipe lists its bases in reverse to keep --help and config.json in this order.
SPECS = (DataSpec, AugmentSpec, ModelSpec, InitSpec, OptimizerSpec, StepSpec, ScheduleSpec, LossSpec, MetricSpec,
         TechniqueSpec, ScalingSpec)


@dataclass
class Recipe(ScalingSpec, TechniqueSpec, MetricSpec, LossSpec, ScheduleSpec, StepSpec, OptimizerSpec, InitSpec,
             ModelSpec, AugmentSpec, DataSpec):
    """Everything that decides what a run trains; `vivace train --help` lists each field."""

    seed: int = knob(42, "random seed: initial weights, shuffling, augmentation, mixing", range=Range(0, MAX_SEED))

    def kwargs(self, spec: type) -> dict[str, Any]:
        """The values of `spec`'s fields: the keyword arguments of the function the spec configures."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(spec)}

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and what is allowed."""
        if self.arch not in MODELS:
            raise ValueError(f"arch={self.arch!r} is not one of: {', '.join(MODELS)}")
        check_fields(self)
        if self.presize_px < self.size_px:
            raise ValueError(f"presize_px={self.presize_px} must be >= size_px={self.size_px}: crops are cut from the "
                             "presized image")
        if self.valid_size_px > self.presize_px:
            raise ValueError(f"valid_size_px={self.valid_size_px} must be in [0, presize_px={self.presize_px}] "
                             "(0 = size_px)")
        if self.labels and self.valid_name:
            raise ValueError(f"valid_name={self.valid_name!r} names a validation folder, but labels={self.labels!r} "
                             "reads the split from the table: give the table a valid_col, or drop one")
        if not self.labels and (self.fn_col or self.label_col or self.valid_col or self.label_delim):
            raise ValueError("fn_col, label_col, valid_col and label_delim read a label table: pass it with --csv")
        if "/" in self.valid_name or self.valid_name in (".", ".."):
            raise ValueError(f"valid_name={self.valid_name!r} must be a folder name (like val or test), not a path")
        if self.stats not in STATS_NAMES:
            parse_stats(self.stats)  # given as mean/std: ValueError saying the form if not
        if self.progressive and self.progressive_start >= self.progressive_end:
            raise ValueError(f"progressive_start={self.progressive_start} must be below progressive_end="
                             f"{self.progressive_end}: the size ramps between them")
        if self.ema_decay and self.ema_half_life:
            raise ValueError(f"ema_decay={self.ema_decay} and ema_half_life={self.ema_half_life}: give one of them "
                             "(a decay per step, or a half-life as a fraction of training)")
        if self.freeze_epochs > self.epochs:
            raise ValueError(f"freeze_epochs={self.freeze_epochs} must be <= epochs={self.epochs}: the frozen epochs "
                             "are the first of the run's epochs")

    @property
    def planned_epochs(self) -> int | None:
        """The epochs a run trains; None when a budget (`budget_s`) ends it instead."""
        return None if self.budget_s else self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainOptions:
    """How a run is carried out, not what it trains: never part of config.json."""

    preset: str = knob("", "start from a named preset; explicit flags override it")
    out: str = knob("", 'run directory; "" = runs/<timestamp>')
    resume: bool = knob(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = knob(False, "replace the run already in --out (its records and checkpoints are deleted)")
    runs: int = knob(1, "repeat with seeds seed, seed+1, ... and report mean and std", range=Range(1))
    threads: int = knob(0, "torch intra-op threads; 0 = $OMP_NUM_THREADS if set, else all cores", range=Range(0))
    reuse_memory: bool = knob(True, "glibc keeps freed memory, no re-faulting per step (1.04-1.2x on CPU)")
    workers: int = knob(0, "processes for building the cache; 0 = all cores", range=Range(0))
    checkpoint_every_min: float = knob(0.0, "minutes between in-epoch checkpoints; 0 = end of epoch only",
                                       aliases=("checkpoint_every",), range=Range(0.0))
    dist_timeout_s: float = knob(0.0, "torchrun: seconds a rank waits for a silent one before failing; "
                                      "0 = $VIVACE_DIST_TIMEOUT or 1800", range=Range(0.0))
    choose: bool = knob(False, "with a budget: choose the model and sizes for it, by calibrating this machine "
                               "against the budget table (vivace.choose); the CLI sets it for --data with --budget "
                               "and no --preset, model, size or epoch flag")
    print_recipe: bool = knob(False, "print the resolved recipe (preset, flags and device rules applied) and exit")
    tensorboard: str = knob("", "folder for TensorBoard scalars: loss and lr per step, each epoch's figures "
                                "(needs vivace[tensorboard]); \"\" = none")

    def validate(self) -> None:
        """Raise ValueError naming the option, its value and what is allowed."""
        check_fields(self)
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} is not one of: {', '.join(PRESETS)}")
        if self.choose and self.resume:
            raise ValueError("choose and resume contradict each other: a resumed run trains what it chose")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite contradict each other: continue the run in --out, or replace it")
        if self.tensorboard:  # before any heavy work: a missing package is found now, not after the data
            require_tensorboard()


RUN_SETTINGS = {f.name for f in dataclasses.fields(TrainOptions)}


def load_recipe(path: str | Path) -> Recipe:
    """The Recipe saved in a run's config.json (not validated); ValueError naming the file if unusable.

    Runs saved before the run settings left the recipe carry them (out, runs, threads, ...) in
    config.json too: they are skipped, as they never decided what was trained.
    """
    path = Path(path)
    saved = read_json_object(path, " of recipe fields", "fix the file, or train the run again")
    saved = new_names(saved, where=f"{path}: ")  # runs saved before the fields had units
    saved = {name: value for name, value in saved.items() if name not in RUN_SETTINGS}
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}; a recipe's fields are: "
                         f"{', '.join(fields)}")
    for name, value in saved.items():
        expected = type(fields[name].default)
        # JSON writes 1.0 as 1.0 but a hand edit may write 1: an int is a fine float.
        fits = type(value) is expected or (expected is float and type(value) is int)
        if not fits:
            raise ValueError(f"{path}: field {name} must be {expected.__name__}, got {value!r}")
    return Recipe(**saved)


# Fields renamed to carry their units (2026-12-06) and `opt` -> `optimizer`: old name -> new, from
# each field's `aliases`. The old names still work as flags (`--bs`), as make_recipe keywords,
# and in the config.json of runs saved before.
RENAMED: dict[str, str] = {old: f.name for cls in (Recipe, TrainOptions) for f in dataclasses.fields(cls)
                           for old in f.metadata["aliases"]}


def new_names(fields: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`fields` with old names (RENAMED) replaced by the new ones; ValueError if both are given."""
    out = {RENAMED.get(name, name): value for name, value in fields.items()}
    both = [old for old, new in RENAMED.items() if old in fields and new in fields]
    if both:
        raise ValueError(f"{where}{', '.join(f'{old} and {RENAMED[old]}' for old in both)} name the same field "
                         f"({', '.join(both)}: the old name): give one")
    return out


# Random-resized crop and flip only, as fastai's leaderboard script augments.
_CROP_AND_FLIP = dict(max_rotate_deg=0.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0)
# What the Imagenette leaderboard presets share: the leaderboard's files (imagenette2-160: shorter
# side 160, aspect kept), cached whole and cropped as fastai's RandomResizedCrop does, validated
# as fastai validates (the whole image squashed to 152 px, centre 128); xresnet50 + Mish +
# self-attention, Ranger, flat-cos, label smoothing. The 5-epoch preset departs where measured.
_LEADERBOARD = Recipe(data="imagenette-160", arch="xresnet50", act="mish", self_attention=True, size_px=128,
                      presize_px=160, valid_crop=0.0, batch_size=64, optimizer="ranger", schedule="flat_cos",
                      pct_start=0.72, lr=8e-3, label_smoothing=0.1, **_CROP_AND_FLIP)

# The speedrun's recipe (below): as 12 epochs, and as ten minutes.
_SPEEDRUN = Recipe(data="imagenette-160", arch="xresnet18", widen=0.5, size_px=128, presize_px=160, valid_size_px=160,
                   valid_crop=0.875, valid_every=0, epochs=12, batch_size=128, optimizer="sgd", lr=0.2,
                   weight_decay=5e-4, label_smoothing=0.1, progressive=0.5, **_CROP_AND_FLIP)

# What the ImageNet presets share (below): FFCV's ResNet-50 recipe on ImageNet-1k's files.
_IMAGENET_RN50 = Recipe(arch="xresnet50", blur_pool=True, size_px=192, presize_px=224, max_aspect=4 / 3,
                        progressive=160 / 192, valid_size_px=224, valid_view="square", valid_crop=224 / 256,
                        valid_every=0, batch_size=4096, optimizer="sgd", lr=1.7, momentum=0.9, weight_decay=1e-4,
                        schedule="one_cycle", pct_start=0.125, label_smoothing=0.1, **_CROP_AND_FLIP)

# Named starting points; `vivace train --preset NAME --print-recipe` shows one resolved. What
# each was measured to reach: docs/BENCHMARKS.md.
PRESETS: dict[str, Recipe] = {
    # The README's main job: the embedded dataset on 2 CPU cores in under 2 minutes.
    "quick": Recipe(arch="xresnet18", widen=0.5, size_px=64, presize_px=96, epochs=16, batch_size=32, lr=5e-3,
                    label_smoothing=0.1),
    # The 5-epoch leaderboard entry's recipe exactly (87.43 %): xse_resnext50 + MaxBlurPool, Ranger
    # beta1 0.95, wd 1e-4, batch 32, Resize(128) crops (a random square) + flip, validated once at
    # the end on each image's central square (target 88 %).
    "imagenette-128-5ep": replace(_LEADERBOARD, arch="xse_resnext50", max_blur_pool=True, momentum=0.95,
                                  weight_decay=1e-4, batch_size=32, train_crop="square", valid_every=0, epochs=5),
    # Half the labels wrong (noisy_imagenette.csv's noisy_labels_50): the 5-epoch recipe on a full-width
    # xresnet18 at batch 64, 73.35 % where the xse_resnext50 at batch 32 reads 68.13 % (seed 42, 12-06):
    # in 5 epochs the small model on the larger batch follows the clean majority of the labels better.
    "imagenette-128-5ep-noisy": replace(_LEADERBOARD, arch="xresnet18", max_blur_pool=True, momentum=0.95,
                                        weight_decay=1e-4, batch_size=64, train_crop="square", valid_every=0,
                                        epochs=5),
    # The leaderboard entries' recipes on xresnet50: 20 epochs as the 91.57 % entry (MaxBlurPool,
    # Ranger beta1 0.95, no Mixup), 80 as the 93.55 % one (no MaxBlurPool, Mixup).
    "imagenette-128-20ep": replace(_LEADERBOARD, max_blur_pool=True, momentum=0.95, epochs=20),
    "imagenette-128-80ep": replace(_LEADERBOARD, momentum=0.95, mixup_alpha=0.4, epochs=80),
    # The speedrun: half-width xresnet18, SGD-Nesterov, sizes 64->128 cropped from the whole image
    # (imagenette2-160, presize 160), tested at 160 px on the central 87.5 % of the squashed image
    # (FixRes: random crops make objects look larger in training), validated once at the end.
    "imagenette-speedrun": _SPEEDRUN,
    # The speedrun as a budget: ten minutes of it with the stem at half width (16/16/32), which trains
    # 1.7x faster here; `--budget` changes the time (docs/budget.md).
    "imagenette-10m": replace(_SPEEDRUN, stem_widen=0.5, budget_s=600.0),
    # ImageNet-1k (not measured: no ImageNet and no GPU here) after FFCV's ResNet-50 configs
    # (rn50_16_epochs.yaml, rn50_40_epochs.yaml): SGD lr 1.7 for a global batch of 4,096 (512 on each of
    # 8 GPUs), wd 1e-4 off BatchNorm, label smoothing 0.1, BlurPool, one schedule stretched over the
    # epochs (theirs linear up to epoch 2 and down to 0 at momentum 0.9; one-cycle's cosines here,
    # momentum cycled), 160 px until 75 % of training then 192 (their ramp, snapped to 32), validated
    # at the centre 224/256 of the square (theirs at 256 px, from images kept up to 500 px; a presize
    # cache of 224 here), with flip TTA (`vivace evaluate RUN --tta flip`). xresnet50 is ResNet-50 with
    # fastai's stem and shortcut changes (ResNet-D), not torchvision's. docs/distributed.md: the runbook.
    "imagenet-rn50-16ep": replace(_IMAGENET_RN50, epochs=16, progressive_start=11 / 16, progressive_end=13 / 16),
    "imagenet-rn50-40ep": replace(_IMAGENET_RN50, epochs=40, progressive_start=29 / 40, progressive_end=34 / 40),
}

# Presets no vivace run has measured, and the published figure each aims at: said in every run's
# recipe.txt and by --print-recipe, so nobody reads a paper's number as vivace's.
UNMEASURED: dict[str, str] = {
    "imagenet-rn50-16ep": "FFCV's ResNet-50, 16 epochs on 8 A100s: 73.8 % top-1 in 14.9 min",
    "imagenet-rn50-40ep": "FFCV's ResNet-50, 40 epochs on 8 A100s: 77.2 % top-1 in 35.6 min",
}


def make_recipe(preset: str = "", **overrides: Any) -> Recipe:
    """A Recipe from a preset (a Recipe value) plus explicit overrides, validated.

    An explicit `batch_size` is the batch on every device: it drops the preset's `cuda_batch_size`.
    Old field names (`bs`, `wd`, ... see RENAMED) are accepted; run settings (out, workers, ...)
    are not: they belong to `TrainOptions`.
    """
    if preset and preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not one of: {', '.join(PRESETS)}")
    overrides = new_names(overrides)
    settings = sorted(set(overrides) & RUN_SETTINGS)
    if settings:
        raise ValueError(f"{', '.join(settings)}: run settings, not recipe fields: pass them in TrainOptions")
    if "batch_size" in overrides:
        overrides.setdefault("cuda_batch_size", 0)
    recipe = replace(PRESETS[preset] if preset else Recipe(), **overrides)
    recipe.validate()
    return recipe


def device_batch(device: torch.device, batch_size: int, lr: float, optimizer: str, cuda_batch_size: int = 0,
                 lr_scaling: LrScaling = "auto") -> tuple[int, float]:
    """The (batch_size, lr) a run uses on `device`: on CUDA `cuda_batch_size` (when set), lr scaled by its rule."""
    if device.type != "cuda" or not cuda_batch_size:
        return batch_size, lr
    return cuda_batch_size, scaled_lr(lr, cuda_batch_size / batch_size, scaling_rule(lr_scaling, optimizer))


def for_device(recipe: Recipe, device: torch.device) -> Recipe:
    """The recipe as it runs on `device` (`device_batch`), with `cuda_batch_size` 0.

    So a run's config.json says what ran, and a resume (on any device) continues at the same
    batch and learning rate.
    """
    batch_size, lr = device_batch(device, recipe.batch_size, recipe.lr, recipe.optimizer,
                                  **recipe.kwargs(ScalingSpec))
    return replace(recipe, batch_size=batch_size, lr=lr, cuda_batch_size=0)


def scaling_rule(lr_scaling: str, optimizer: str) -> str:
    """`auto` as timm resolves it: linear for SGD (Goyal et al. 2017), sqrt for adaptive optimizers."""
    if lr_scaling != "auto":
        return lr_scaling
    return "linear" if optimizer == "sgd" else "sqrt"


def scaled_lr(lr: float, batch_ratio: float, rule: str) -> float:
    """`lr` for a batch `batch_ratio` times the one it was tuned for."""
    exponent = {"linear": 1.0, "sqrt": 0.5, "off": 0.0}[rule]
    return lr * batch_ratio**exponent


def resolve(recipe: Recipe, device: torch.device) -> Recipe:
    """The recipe as it runs: the device's batch and lr (`for_device`), the validation view as
    `make_dataloaders` resolves it (no `auto`, no 0 for the view, its crop or its size), its data,
    label table and where it starts (`data`, `labels` and `init` as absolute paths; `stats=auto`:
    the --init model's statistics, else imagenet), and `fine_tune` as the schedule of a run with
    frozen epochs."""
    recipe = for_device(recipe, device)
    valid_size_px = recipe.valid_size_px or recipe.size_px
    view, crop = resolve_valid_view(recipe.valid_view, recipe.valid_crop, valid_size_px, recipe.train_crop)
    init = str(Path(recipe.init).resolve()) if recipe.init else ""
    data = absolute_data(recipe.data)
    # A table found from the current folder, made absolute too; one named inside the data folder stays so.
    labels = os.path.abspath(recipe.labels) if recipe.labels and Path(recipe.labels).is_file() else recipe.labels
    stats = recipe.stats
    if stats == "auto":
        stats = inherited_stats(init, recipe.init_weights) if init else "imagenet"
    schedule = "fine_tune" if recipe.freeze_epochs else recipe.schedule
    return replace(recipe, valid_view=view, valid_crop=crop, valid_size_px=valid_size_px, data=data, labels=labels,
                   init=init, stats=stats, schedule=schedule)


def absolute_data(data: str) -> str:
    """A data folder as an absolute path (a dataset name or "" as it is): config.json then names
    the same folder from any working directory, never another folder of the same name."""
    if not data or data in DATASETS:
        return data
    return os.path.abspath(Path(data).expanduser())


def describe(asked: Recipe, resolved: Recipe, device: torch.device, preset: str = "", world_size: int = 1) -> str:
    """The resolved recipe as text, spec by spec (`name = value`, TOML-like), each resolved value
    beside what was asked: `vivace train --print-recipe` and each run's recipe.txt."""
    processes = "1 process" if world_size == 1 else f"{world_size} processes"
    lines = [f"# vivace recipe: preset {preset or '(none)'}; on {device.type}, {processes}",
             "# '# asked' marks a value resolved for this device or from an auto / 0"]
    for spec in SPECS:
        lines.append(f"\n[{spec.__name__.removesuffix('Spec').lower()}]")
        lines += [_line(f.name, getattr(asked, f.name), getattr(resolved, f.name)) for f in dataclasses.fields(spec)]
    lines += ["", _line("seed", asked.seed, resolved.seed)]
    notes = (unmeasured_note(preset) + _device_notes(resolved, device, world_size) + fine_tune_rates(resolved)
             + budget_note(resolved))
    return "\n".join(lines + [""] + [f"# {note}" for note in notes]) + "\n"


def _line(name: str, asked: Any, used: Any) -> str:
    text = f"{name} = {json.dumps(used)}"
    return text if asked == used else f"{text}  # asked: {json.dumps(asked)}"


def unmeasured_note(preset: str) -> list[str]:
    """A preset on paper: the published figure it aims at, and that vivace has not measured it."""
    if preset not in UNMEASURED:
        return []
    return [f"preset {preset} is not measured by vivace: it follows, and aims at, {UNMEASURED[preset]}"]


def budget_note(recipe: Recipe) -> list[str]:
    """Under a budget, what decides the run's length (docs/budget.md)."""
    if not recipe.budget_s:
        return []
    return [f"budget_s: the run ends {format_duration(recipe.budget_s)} after its data is prepared, the final "
            f"validation included; epochs = {recipe.epochs} is not used"]


def fine_tune_rates(recipe: Recipe) -> list[str]:
    """A fine-tune's parameter groups and the peak rate of each, frozen and after unfreezing."""
    if not recipe.fine_tunes:
        return []
    with torch.device("meta"):  # the model's layout, without allocating its weights
        groups = [name for name, _ in layer_groups(create_model(recipe.arch, n_out=1))]
    frozen = spread_lr(slice(recipe.lr), len(groups))[1]
    unfrozen = even_mults(1 / recipe.lr_mult, len(groups))
    lines = [f"fine_tune: parameter groups {', '.join(groups)} (vivace.models.layer_groups)"]
    if recipe.freeze_epochs:
        lines.append(f"  {_epochs(1, recipe.freeze_epochs)}, frozen (only the head and BatchNorm train): peak lr "
                     + ", ".join(f"{name} {recipe.lr * m:.3g}" for name, m in zip(groups, frozen)))
    lines.append(f"  {_epochs(recipe.freeze_epochs + 1, recipe.epochs)}, unfrozen (optimizer started afresh): peak lr "
                 + ", ".join(f"{name} {recipe.lr / 2 * m:.3g}" for name, m in zip(groups, unfrozen)))
    return lines


def _epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def _device_notes(recipe: Recipe, device: torch.device, world_size: int) -> list[str]:
    """What the device decides at run time, beyond the recipe's values."""
    per_rank = max(recipe.batch_size // world_size, 1)
    dtype = autocast_dtype(device, recipe.amp)
    notes = [f"amp {recipe.amp}: {'fp32' if dtype is None else str(dtype).removeprefix('torch.')} on this "
             f"{device.type}"]
    if not recipe.valid_batch_size:
        notes.append(f"valid_batch_size 0: {eval_batch_size(per_rank, device)} per process on {device.type}")
    if world_size > 1:
        notes.append(f"batch_size {recipe.batch_size} is global: {per_rank} per process")
    return notes
