"""Validation views: how evaluation, TTA, export and predict show an image to the model.

fastai's two views: `ValidResize` squashes the whole image and cuts its centre (RandomResizedCrop
in validation), or with `square=True` cuts each image's central square (Resize). `five_crop` and
`center_crop_resize` are the views TTA adds. All take uint8 `Pictures` (or a plain batch).
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from .augment import CHANNELS_LAST, check_size, crop_resize, to_unit
from .flags import Range
from .pictures import Pictures, as_pictures

ValidView = Literal["auto", "squash", "square"]  # auto: the training crop's view in fastai (see ValidResize)
VALID_VIEWS = get_args(ValidView)
CROP = Range(0.0, 1.0, low_open=True)  # the central fraction of each side a view shows


def _check_crop(size: int, crop_frac: float) -> None:
    check_size(size)
    CROP.check("crop_frac", crop_frac)


def square_boxes(sizes: Tensor, crop_frac: float, where: str = "centre") -> Tensor:
    """(n, 4) boxes of the square of side crop_frac * min(h, w) at the centre or a corner (tl, tr, bl, br)."""
    h, w = sizes.double().unbind(dim=1)
    side = (crop_frac * torch.minimum(h, w)).round().clamp(min=1)
    bw, bh = side / w, side / h
    sx = {"centre": 0, "tl": -1, "tr": 1, "bl": -1, "br": 1}[where]
    sy = {"centre": 0, "tl": -1, "tr": -1, "bl": 1, "br": 1}[where]
    return torch.stack([sx * (1 - bw), sy * (1 - bh), bw, bh], dim=1).float()


def center_crop_resize(x: Pictures | Tensor, size: int, crop_frac: float = 1.0) -> Tensor:
    """Centre square of side crop_frac*min(h, w) of each image, resized to (B, 3, size, size) float in [0, 1]."""
    _check_crop(size, crop_frac)
    p = as_pictures(x)
    return to_unit(crop_resize(p, square_boxes(p.sizes, crop_frac), torch.ones(len(p)), size))


def five_crop(x: Pictures | Tensor, size: int, crop_frac: float = 0.875) -> list[Tensor]:
    """Centre, top-left, top-right, bottom-left, bottom-right squares, each (B, 3, size, size) float in [0, 1]."""
    _check_crop(size, crop_frac)
    p = as_pictures(x)
    keep = torch.ones(len(p))
    return [to_unit(crop_resize(p, square_boxes(p.sizes, crop_frac, where), keep, size))
            for where in ("centre", "tl", "tr", "bl", "br")]


def _resize_pixels(x: Tensor, size: int) -> Tensor:
    """Antialiased resize to (size, size), channels_last; uint8 stays uint8 on the CPU."""
    if tuple(x.shape[-2:]) == (size, size):
        return x.contiguous(memory_format=CHANNELS_LAST)
    if x.dtype != torch.uint8 or x.device.type != "cpu":  # the uint8 kernel is the CPU's
        x = to_unit(x)
    y = F.interpolate(x.contiguous(memory_format=CHANNELS_LAST), size=(size, size), mode="bilinear",
                      antialias=True, align_corners=False)
    return y.contiguous(memory_format=CHANNELS_LAST)


VAL_XTRA = 0.14  # fastai's RandomResizedCrop: validation resizes to size + xtra, then centre-crops


def fastai_valid_crop(size: int) -> float:
    """The fraction of each side fastai's RandomResizedCrop shows in validation at `size`.

    It squashes the whole image to size + xtra square (xtra = 14 % of size, rounded up to a
    multiple of 8) and centre-crops `size`: 128 / 152 = 0.842 at 128 px, 224 / 256 at 224.
    """
    return size / (size + math.ceil(size * VAL_XTRA / 8) * 8)


class ValidResize:
    """Validation transform, fastai's: each image squashed whole to (size / crop) square, antialiased,
    then its central (size, size) cut out (crop < 1 shows objects larger, as training's crops did).
    `square=True` is the view of fastai's `Resize` (training with `crop="square"`) instead: the
    central square of side crop * the shorter side, resized to `size`; no squash.

    `crop=fastai_valid_crop(size)` is exactly fastai's RandomResizedCrop in validation. On square
    images this is the centre `crop` fraction resized (timm's crop_pct): 0.875 measured +1.2 % on
    xresnet50 and +1.2-1.8 % on the speedrun model (docs/notes/benchmarks-journal.md).
    """

    def __init__(self, size: int, crop: float = 1.0, square: bool = False):
        check_size(size)
        CROP.check("crop", crop)
        self.size, self.crop, self.square = size, crop, square

    def __call__(self, x: Pictures | Tensor) -> Tensor:
        """uint8 Pictures (or a (B, 3, H, W) batch) -> float (B, 3, size, size) in [0, 1], channels_last."""
        return to_unit(self.pixels(x))

    @property
    def resized(self) -> int:
        """The side each image is squashed to before the centre crop."""
        return max(self.size, round(self.size / self.crop))

    def pixels(self, x: Pictures | Tensor) -> Tensor:
        """As calling it, but uint8 (0..255) on the CPU: `Normalize` scales it in its own pass."""
        p = as_pictures(x)
        if self.square:
            return crop_resize(p, square_boxes(p.sizes, self.crop), torch.ones(len(p)), self.size)
        if p.fill_canvas:  # one shape for the whole batch (square data): one batched resize
            y = _resize_pixels(p.pixels, self.resized)
        else:
            y = crop_resize(p, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(len(p), 4), torch.ones(len(p)),
                            self.resized)
        margin = (self.resized - self.size) // 2
        return y[..., margin:margin + self.size, margin:margin + self.size].contiguous(memory_format=CHANNELS_LAST)


def resolve_valid_view(valid_view: ValidView, valid_crop: float, size: int, train_crop: str) -> tuple[str, float]:
    """The (view, crop) that validation at `size` actually uses: what `auto` and `valid_crop=0` mean.

    auto: as in fastai, the training crop decides the view (its Resize, `train_crop="square"`,
    validates on the centre square; its RandomResizedCrop squashes the whole image). valid_crop
    0: fastai's fraction for that view (all of the square; `fastai_valid_crop(size)` of the squash).
    """
    if valid_view not in VALID_VIEWS:
        raise ValueError(f"valid_view={valid_view!r} is not one of: {', '.join(VALID_VIEWS)}")
    view = ("square" if train_crop == "square" else "squash") if valid_view == "auto" else valid_view
    crop = valid_crop or (1.0 if view == "square" else fastai_valid_crop(size))
    return view, crop
