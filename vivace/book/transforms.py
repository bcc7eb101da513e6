"""The book's transforms as plain descriptions: `Resize`, `aug_transforms`, `Normalize`.

They do no work themselves: `DataBlock.dataloaders` reads them and passes their numbers to
`vivace.data.make_dataloaders` (presize, size, TrainAugment settings, statistics).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vivace import augment, normalize

SQUARE_CROP = (1.0, 1.0)  # fastai's aug_transforms builds RandomResizedCropGPU with ratio=(1, 1)


@dataclass(frozen=True)
class Resize:
    """fastai's `Resize(460)` item transform: the side, px, of the centre square vivace caches."""

    size: int | tuple[int, int]
    method: str = "crop"

    def __post_init__(self) -> None:
        if self.method != "crop":
            raise ValueError(f"Resize(method={self.method!r}): vivace's cache only crops the centre "
                             "square ('crop'); 'squish' and 'pad' are not supported")
        sides = self.size if isinstance(self.size, tuple) else (self.size, self.size)
        if len(sides) != 2 or sides[0] != sides[1] or not isinstance(sides[0], int) or sides[0] < 1:
            raise ValueError(f"Resize(size={self.size!r}): need a positive int (or a square (n, n)); "
                             "vivace caches square images")

    @property
    def presize(self) -> int:
        """The cache's side in pixels."""
        return self.size[0] if isinstance(self.size, tuple) else self.size


@dataclass(frozen=True)
class AugTransforms:
    """What `aug_transforms(...)` asked for: the crop size and vivace `TrainAugment` settings."""

    size: int | None  # None: keep the item size (the Resize presize), as fastai does
    min_scale: float
    ratio: tuple[float, float]
    flip: bool
    max_rotate_deg: float
    max_zoom: float
    max_warp: float
    p_affine: float
    max_lighting: float
    p_lighting: float

    def augment_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vivace.augment.TrainAugment` (everything but the size)."""
        kwargs = dataclasses.asdict(self)
        del kwargs["size"]
        return kwargs


def no_augmentation(size: int | None = None) -> AugTransforms:
    """The settings for a DataBlock without aug_transforms: the whole image, unchanged."""
    return AugTransforms(size, 1.0, SQUARE_CROP, False, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)


def aug_transforms(mult: float = 1.0, do_flip: bool = True, flip_vert: bool = False,
                   max_rotate: float = 10.0, min_zoom: float = 1.0, max_zoom: float = 1.1,
                   max_lighting: float = 0.2, max_warp: float = 0.2, p_affine: float = 0.75,
                   p_lighting: float = 0.75, *, size: int | None = None,
                   min_scale: float = 1.0) -> list[AugTransforms]:
    """fastai's `aug_transforms`: flip, rotate, zoom, warp, lighting and (min_scale < 1) a random crop.

    Returns a one-element list so `[*aug_transforms(...), Normalize...]` reads as in the book.
    As in fastai, `mult` scales max_rotate, max_lighting and max_warp; with min_scale=1 no random
    crop is taken (the whole image is resized to `size`); random crops are square (ratio 1).
    """
    if flip_vert:
        raise ValueError("aug_transforms(flip_vert=True) (fastai's Dihedral: vertical flips and 90 degree "
                         "turns) is not supported: vivace flips horizontally only")
    if min_zoom != 1.0:
        raise ValueError(f"aug_transforms(min_zoom={min_zoom}): vivace zooms in only (min_zoom=1.0)")
    aug = AugTransforms(size=size, min_scale=min_scale, ratio=SQUARE_CROP, flip=do_flip,
                        max_rotate_deg=max_rotate * mult, max_zoom=max_zoom, max_warp=max_warp * mult,
                        p_affine=p_affine, max_lighting=max_lighting * mult, p_lighting=p_lighting)
    augment.TrainAugment(size if size is not None else 1, **aug.augment_kwargs())  # validates, here
    return [aug]


@dataclass(frozen=True)
class Normalize:
    """fastai's `Normalize` batch transform; with no statistics they are computed from the data.

    fastai computes missing statistics from one training batch; vivace from a sample of up to
    1024 training images (`make_dataloaders(stats="computed")`).
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("Normalize: give both mean and std, or neither (computed from the data)")

    @classmethod
    def from_stats(cls, mean: Iterable[float], std: Iterable[float]) -> Normalize:
        """`Normalize.from_stats(*imagenet_stats)`, as in fastai."""
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def presize_from(item_tfms: Any) -> int | None:
    """The presize a DataBlock's item_tfms ask for (None when there is no Resize)."""
    tfms = as_list(item_tfms)
    for tfm in tfms:
        if not isinstance(tfm, Resize):
            raise ValueError(f"item_tfms entry {tfm!r} is not supported: vivace understands Resize(n)")
    if len(tfms) > 1:
        raise ValueError(f"item_tfms has {len(tfms)} Resize entries; give one")
    return tfms[0].presize if tfms else None


def split_batch_tfms(batch_tfms: Any) -> tuple[AugTransforms | None, Normalize | normalize.Normalize | None]:
    """The aug_transforms settings and the Normalize among a DataBlock's batch_tfms."""
    aug, norm = None, None
    for tfm in as_list(batch_tfms):
        if isinstance(tfm, AugTransforms) and aug is None:
            aug = tfm
        elif isinstance(tfm, (Normalize, normalize.Normalize)) and norm is None:
            norm = tfm
        else:
            raise ValueError(f"batch_tfms entry {tfm!r} is not supported (or repeated): vivace "
                             "understands one aug_transforms(...) and one Normalize")
    return aug, norm


def stats_from(norm: Normalize | normalize.Normalize | None) -> str | tuple[list[float], list[float]]:
    """`make_dataloaders(stats=...)` for a Normalize: 'computed' when it carries no statistics."""
    if norm is None or norm.mean is None:
        return "computed"
    return list(norm.mean), list(norm.std)


def as_list(tfms: Any) -> list:
    """None -> [], a list or tuple -> a list, anything else -> a one-element list."""
    if tfms is None:
        return []
    return list(tfms) if isinstance(tfms, (list, tuple)) else [tfms]
