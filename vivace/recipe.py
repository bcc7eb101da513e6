"""The one config: a `Recipe` dataclass that the CLI maps onto, and named presets."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from .augment import TrainCrop, ValidView
from .data.resident import DataOnDevice
from .flags import knob, literal_choices
from .models import MODELS
from .optim import OptName
from .runtime import CompileMode

Schedule = Literal["one_cycle", "flat_cos"]
Activation = Literal["relu", "mish", "silu"]
AmpMode = Literal["auto", "bf16", "fp16", "off"]
Stats = Literal["imagenet", "computed"]
LrScaling = Literal["auto", "linear", "sqrt", "off"]


@dataclass
class Recipe:
    """Everything a training run needs; `vivace train --help` lists each field."""

    data: str = knob("", 'dataset name (imagenette, imagewoof-160, ...) or folder; "" = embedded')
    valid_name: str = knob("", 'validation folder beside train/ in --data; "" = val or valid')
    arch: str = knob("xresnet18", "model name from vivace.models.MODELS")
    widen: float = knob(1.0, "channel width multiplier (0.5 = half-width)")
    act: Activation = knob("relu", "activation: relu, mish or silu")
    self_attention: bool = knob(False, "fastai's simple self-attention in the model")
    blur_pool: bool = knob(False, "anti-aliased downsampling: strided convs and pools")
    max_blur_pool: bool = knob(False, "only the pools anti-aliased (MaxBlurPool, as the leaderboard's)")
    size_px: int = knob(128, "final training and validation crop size, px", aliases=("size",))
    presize_px: int = knob(160, "shorter side of the cached images, px (>= size_px)", aliases=("presize",))
    max_aspect: float = knob(3.0, "longer side / shorter side the cache keeps whole; 1 = centre squares")
    valid_size_px: int = knob(0, "validation (and export) crop side, px; 0 = size_px (FixRes: test a bit larger)",
                              aliases=("valid_size",))
    valid_crop: float = knob(1.0, "central fraction of each side validation shows; 0 = fastai's (0.842 at 128 px)")
    valid_view: ValidView = knob("auto", "squash (whole image: fastai's RandomResizedCrop) or square "
                                         "(centre: Resize); auto: train_crop's")
    epochs: int = knob(5, "training epochs")
    batch_size: int = knob(64, "training batch size (global, over all processes)", aliases=("bs",))
    lr: float = knob(3e-3, "peak learning rate for the global batch")
    cuda_batch_size: int = knob(0, "batch size on a CUDA device, where a larger batch keeps the GPU busy; 0 = "
                                        "batch_size. lr follows by --lr-scaling; an explicit --batch-size wins",
                                aliases=("cuda_bs",))
    lr_scaling: LrScaling = knob("auto", "how lr follows cuda_batch_size: linear, sqrt or off; auto = linear for sgd, "
                                         "sqrt for adamw and ranger (timm's rule)")
    opt: OptName = knob("adamw", "adamw, sgd (Nesterov) or ranger (RAdam + lookahead)")
    weight_decay: float = knob(0.01, "weight decay (decoupled for adamw/ranger), not on BatchNorm or biases",
                               aliases=("wd",))
    momentum: float = knob(0.9, "momentum (sgd) or beta1 (adamw, ranger) where the schedule keeps it (flat_cos)",
                           aliases=("mom",))
    schedule: Schedule = knob("one_cycle", "one_cycle or flat_cos")
    pct_start: float = knob(0.25, "fraction of training spent warming up (one_cycle) or flat (flat_cos)")
    label_smoothing: float = knob(0.0, "epsilon of label smoothing")
    mixup_alpha: float = knob(0.0, "Mixup alpha; 0 = off", aliases=("mixup",))
    cutmix_alpha: float = knob(0.0, "CutMix alpha; 0 = off (both > 0: alternate per batch)", aliases=("cutmix",))
    normalize: bool = knob(True, "normalize inputs by channel statistics")
    stats: Stats = knob("imagenet", "imagenet, or computed (from a sample of the training set)")
    train_crop: TrainCrop = knob("random_resized", "fastai's RandomResizedCrop, or square: its Resize "
                                                   "(largest square, random place)")
    min_scale: float = knob(0.35, "smallest crop area fraction of random-resized-crop")
    flip: bool = knob(True, "random horizontal flips")
    max_rotate_deg: float = knob(10.0, "degrees, fastai aug_transforms default", aliases=("max_rotate",))
    max_zoom: float = knob(1.1, "largest random zoom; 1 = none")
    max_warp: float = knob(0.2, "perspective warp strength; 0 = none")
    max_lighting: float = knob(0.2, "brightness and contrast change; 0 = none")
    trivial_augment: bool = knob(False, "TrivialAugment-Wide: one random op of random strength per image")
    progressive: float = knob(0.0, "progressive resizing start fraction of size; 0 = off")
    progressive_end: float = knob(0.75, "fraction of training after which the size stays final")
    ema_decay: float = knob(0.0, "EMA decay of weights for evaluation; 0 = off", aliases=("ema",))
    valid_batch_size: int = knob(0, "evaluation batch size; 0 = 128 on a CPU, twice the training batch (at least "
                                    "128) on CUDA", aliases=("valid_bs",))
    valid_every: int = knob(1, "validate after every N-th epoch and always the last; 0 = the last only")
    channels_last: bool = knob(True, "NHWC memory format: measured ~1.4x faster on CPU for xresnet50")
    amp: AmpMode = knob("auto", "mixed precision: auto (bf16 on CUDA and AMX CPUs, else off), bf16, fp16, off")
    compile: bool = knob(False, "torch.compile the model (slow start, no gain measured on CPU)")
    compile_mode: CompileMode = knob("default", "with --compile: default, reduce-overhead (CUDA graphs), "
                                               "max-autotune, ...")
    sync_bn: bool = knob(False, "SyncBatchNorm across processes under torchrun")
    threads: int = knob(0, "torch intra-op threads; 0 = all cores")
    reuse_memory: bool = knob(True, "glibc keeps freed memory, no re-faulting per step (1.04-1.2x on CPU)")
    workers: int = knob(0, "processes for building the cache; 0 = all cores")
    data_on_device: DataOnDevice = knob("auto", "keep the cache in device memory: auto (a CUDA device it "
                                                "fits on), on, off")
    seed: int = knob(42, "random seed: initial weights, shuffling, augmentation")
    runs: int = knob(1, "repeat with seeds seed, seed+1, ... and report mean and std")
    out: str = knob("", 'run directory; "" = runs/<timestamp>')
    resume: bool = knob(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = knob(False, "replace the run already in --out (its records and checkpoints are deleted)")
    checkpoint_every_min: float = knob(0.0, "minutes between in-epoch checkpoints; 0 = end of epoch only",
                                       aliases=("checkpoint_every",))
    preset: str = knob("", "start from a named preset; explicit flags override it")
    dist_timeout_s: float = knob(0.0, "torchrun: seconds a rank waits for a silent one before failing; "
                                      "0 = $VIVACE_DIST_TIMEOUT or 1800")

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and what is allowed."""
        _choice("arch", self.arch, tuple(MODELS))
        for name, allowed in literal_choices(Recipe).items():
            _choice(name, getattr(self, name), allowed)
        for name in ("size_px", "presize_px", "epochs", "batch_size", "runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("cuda_batch_size", "valid_batch_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 = the default)")
        if self.presize_px < self.size_px:
            raise ValueError(f"presize_px={self.presize_px} must be >= size_px={self.size_px}: crops are cut from the "
                             "presized image")
        if not 0 <= self.valid_size_px <= self.presize_px:
            raise ValueError(f"valid_size_px={self.valid_size_px} must be in [0, presize_px={self.presize_px}] "
                             "(0 = size_px)")
        for name, (low, high, low_open, high_open) in FLOAT_RANGES.items():
            _in_range(name, getattr(self, name), low, high, low_open, high_open)
        if self.valid_every < 0:
            raise ValueError(f"valid_every={self.valid_every} must be >= 0")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite contradict each other: continue the run in --out, or replace it")
        if "/" in self.valid_name or self.valid_name in (".", ".."):
            raise ValueError(f"valid_name={self.valid_name!r} must be a folder name (like val or test), not a path")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_recipe(path: str | Path) -> Recipe:
    """The Recipe saved in a run's config.json (not validated); ValueError naming the file if unusable."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); fix the file, or train the run again") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: must hold a JSON object of recipe fields, got {type(saved).__name__}")
    saved = new_names(saved, where=f"{path}: ")  # runs saved before the fields had units
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


# Fields renamed to carry their units (12-06): old name -> new, from each field's `aliases`. The
# old names still work as flags (`--bs`), as make_recipe keywords, and in the config.json of
# runs saved before.
RENAMED: dict[str, str] = {old: f.name for f in dataclasses.fields(Recipe) for old in f.metadata["aliases"]}


def new_names(fields: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`fields` with old names (RENAMED) replaced by the new ones; ValueError if both are given."""
    out = {RENAMED.get(name, name): value for name, value in fields.items()}
    both = [old for old, new in RENAMED.items() if old in fields and new in fields]
    if both:
        raise ValueError(f"{where}{', '.join(f'{old} and {RENAMED[old]}' for old in both)} name the same field "
                         f"({', '.join(both)}: the old name): give one")
    return out


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of: {', '.join(allowed)}")


def _in_range(name: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:  # nan fails every comparison: test it explicitly
        kind = "" if math.isfinite(value) else "a finite number "
        if high == math.inf:
            raise ValueError(f"{name}={value} must be {kind}{'>' if low_open else '>='} {low:g}")
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name}={value} must be {kind}in {left}{low}, {high}{right}")


# The allowed range of every float field: (low, high, low_open, high_open). inf = no upper
# bound, but a value must still be finite (`--mixup inf` is a typo, not a recipe).
FLOAT_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "widen": (0.0, math.inf, True, False),
    "valid_crop": (0.0, 1.0, False, False),
    "max_aspect": (1.0, 100.0, False, False),
    "lr": (0.0, 10.0, True, False),
    "weight_decay": (0.0, math.inf, False, False),
    "momentum": (0.0, 1.0, False, True),
    "pct_start": (0.0, 1.0, False, False),
    "label_smoothing": (0.0, 1.0, False, True),
    "mixup_alpha": (0.0, math.inf, False, False),
    "cutmix_alpha": (0.0, math.inf, False, False),
    "min_scale": (0.0, 1.0, True, False),
    "max_rotate_deg": (0.0, 180.0, False, False),
    "max_zoom": (1.0, math.inf, False, False),
    "max_warp": (0.0, 1.0, False, False),
    "max_lighting": (0.0, 1.0, False, False),
    "progressive": (0.0, 1.0, False, False),
    "progressive_end": (0.0, 1.0, False, False),
    "ema_decay": (0.0, 1.0, False, True),
    "checkpoint_every_min": (0.0, math.inf, False, False),
    "dist_timeout_s": (0.0, math.inf, False, False),
}


# Random-resized crop and flip only, as fastai's leaderboard script augments.
_CROP_AND_FLIP = dict(max_rotate_deg=0.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0)
# What the Imagenette leaderboard presets share: the leaderboard's files (imagenette2-160: shorter
# side 160, aspect kept), cached whole and cropped as fastai's RandomResizedCrop does, validated
# as fastai validates (the whole image squashed to 152 px, centre 128); xresnet50 + Mish +
# self-attention, Ranger, flat-cos, label smoothing. The 5-epoch preset departs where measured.
_LEADERBOARD = Recipe(data="imagenette-160", arch="xresnet50", act="mish", self_attention=True, size_px=128,
                      presize_px=160, valid_crop=0.0, batch_size=64, opt="ranger", schedule="flat_cos", pct_start=0.72,
                      lr=8e-3, label_smoothing=0.1, **_CROP_AND_FLIP)

# Named starting points. Numbers in docs/BENCHMARKS.md say what each was measured to reach.
PRESETS: dict[str, Recipe] = {
    # The README's main job: the embedded dataset on 2 CPU cores in under 2 minutes.
    # Measured: 0.56 accuracy in 23 s (AdamW, AMD EPYC, 12-05; 0.63 on 12-04); SGD at lr 8e-3, wd 5e-5 reached 0.41 in 25 s.
    "quick": Recipe(arch="xresnet18", widen=0.5, size_px=64, presize_px=96, epochs=16, batch_size=32, lr=5e-3,
                    label_smoothing=0.1),
    # The 5-epoch leaderboard entry's recipe exactly (87.43 %): xse_resnext50 + MaxBlurPool, Ranger
    # beta1 0.95, wd 1e-4, batch 32, Resize(128) crops (a random square) + flip, validated once at
    # the end on each image's central square. On imagenette2-160 it read 87.92 % (seed 42) where
    # the same levers on xresnet50 with RandomResizedCrop and wd 0.01 read 85.73 %.
    # Runs and ablations: docs/BENCHMARKS.md (target 88 %).
    "imagenette-128-5ep": replace(_LEADERBOARD, arch="xse_resnext50", max_blur_pool=True, momentum=0.95,
                                  weight_decay=1e-4, batch_size=32, train_crop="square", valid_every=0, epochs=5),
    # The leaderboard entries' recipes on xresnet50, unmeasured here (20 epochs are ~4 h on 2
    # cores): 20 epochs as the 91.57 % entry (MaxBlurPool, Ranger beta1 0.95, no Mixup), 80 as
    # the 93.55 % one (no MaxBlurPool, Mixup). docs/BENCHMARKS.md.
    "imagenette-128-20ep": replace(_LEADERBOARD, max_blur_pool=True, momentum=0.95, epochs=20),
    "imagenette-128-80ep": replace(_LEADERBOARD, momentum=0.95, mixup_alpha=0.4, epochs=80),
    # The speedrun: half-width xresnet18, SGD-Nesterov, sizes 64->128 cropped from the whole image
    # (imagenette2-160, presize 160), tested at 160 px on the central 87.5 % of the squashed image
    # (FixRes: random crops make objects look larger in training), validated once at the end.
    # Tuned on the 224 px squares (12-02, presize 224); 9 epochs on imagenette2-160 read 81.7 %.
    # docs/BENCHMARKS.md has the timed runs beside the squares' reference.
    "imagenette-speedrun": Recipe(data="imagenette-160", arch="xresnet18", widen=0.5, size_px=128,
                                  presize_px=160, valid_size_px=160, valid_crop=0.875, valid_every=0, epochs=12,
                                  batch_size=128, opt="sgd", lr=0.2, weight_decay=5e-4, label_smoothing=0.1,
                                  progressive=0.5,
                                  **_CROP_AND_FLIP),
}


def make_recipe(preset: str = "", **overrides: Any) -> Recipe:
    """A Recipe from a preset (a Recipe value) plus explicit overrides, validated.

    An explicit `batch_size` is the batch on every device: it drops the preset's `cuda_batch_size`.
    Old field names (`bs`, `wd`, ... see RENAMED) are accepted.
    """
    if preset and preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not one of: {', '.join(PRESETS)}")
    overrides = new_names(overrides)
    if "batch_size" in overrides:
        overrides.setdefault("cuda_batch_size", 0)
    recipe = replace(PRESETS[preset] if preset else Recipe(), **overrides, preset=preset)
    recipe.validate()
    return recipe


def for_device(recipe: Recipe, device: torch.device) -> Recipe:
    """The recipe as it runs on `device`: on CUDA its `cuda_batch_size` replaces `batch_size`, `lr` follows.

    The result has `cuda_batch_size` 0, so a run's config.json says what ran and a resume (on any
    device) continues at the same batch and learning rate.
    """
    if device.type != "cuda" or not recipe.cuda_batch_size:
        return replace(recipe, cuda_batch_size=0)
    lr = scaled_lr(recipe.lr, recipe.cuda_batch_size / recipe.batch_size, scaling_rule(recipe.lr_scaling, recipe.opt))
    return replace(recipe, batch_size=recipe.cuda_batch_size, lr=lr, cuda_batch_size=0)


def scaling_rule(lr_scaling: str, opt: str) -> str:
    """`auto` as timm resolves it: linear for SGD (Goyal et al. 2017), sqrt for adaptive optimizers."""
    if lr_scaling != "auto":
        return lr_scaling
    return "linear" if opt == "sgd" else "sqrt"


def scaled_lr(lr: float, batch_ratio: float, rule: str) -> float:
    """`lr` for a batch `batch_ratio` times the one it was tuned for."""
    exponent = {"linear": 1.0, "sqrt": 0.5, "off": 0.0}[rule]
    return lr * batch_ratio**exponent
