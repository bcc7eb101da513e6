"""Normalize: per-channel statistics, given (ImageNet's) or computed over training images."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

imagenet_stats = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
_CL = torch.channels_last


class Normalize:
    """Per-channel (x - mean) / std on x's device and dtype; `decode` undoes it."""

    def __init__(self, mean: Iterable[float], std: Iterable[float]):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise ValueError(f"mean={self.mean}, std={self.std}: need equal lengths and every std > 0")
        self._cache: dict[tuple, tuple[Tensor, ...]] = {}

    @classmethod
    def from_stats(cls, mean: Iterable[float], std: Iterable[float]) -> Normalize:
        """`Normalize.from_stats(*imagenet_stats)`, as in fastai."""
        return cls(mean, std)

    def _stats(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """mean, std (1, C, 1, 1) and scale = 1/std, shift = -mean/std (C,) on `device` in `dtype`.

        Cached per (device, dtype): building them per batch would be a host->device copy each.
        """
        key = (device, dtype)
        if key not in self._cache:
            mean, std = torch.tensor([self.mean, self.std], dtype=dtype, device=device).unbind(dim=0)
            self._cache[key] = (mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), 1 / std, -mean / std)
        return self._cache[key]

    def _row_stats(self, device: torch.device, dtype: torch.dtype, width: int, pixels: bool) -> tuple[Tensor, Tensor]:
        """scale and shift tiled over one NHWC image row, (W * C,) each; /255 folded in for uint8."""
        key = (device, dtype, width, pixels)
        if key not in self._cache:
            _, _, scale, shift = self._stats(device, dtype)
            scale = scale / 255 if pixels else scale
            self._cache[key] = (scale.repeat(width), shift.repeat(width))
        return self._cache[key]

    def __call__(self, x: Tensor) -> Tensor:
        """(x - mean) / std; a uint8 batch is read as pixel / 255, in the same pass."""
        pixels = x.dtype == torch.uint8
        dtype = torch.get_default_dtype() if pixels else x.dtype
        if x.ndim == 4 and x.is_contiguous(memory_format=_CL) and x.shape[1] > 1:
            return self._channels_last(x, dtype, pixels)
        mean, std, _, _ = self._stats(x.device, dtype)
        return ((x.to(dtype) / 255 if pixels else x) - mean) / std

    def _channels_last(self, x: Tensor, dtype: torch.dtype, pixels: bool) -> Tensor:
        """One multiply-add over NHWC memory, with the statistics tiled along each image row.

        In NHWC memory C is the innermost dim: broadcasting (C,) runs a 3-element inner loop
        that does not vectorize (measured ~10x slower than a (W * C,) row broadcast).
        """
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b * h, w * c)  # a view of the same memory
        scale, shift = self._row_stats(x.device, dtype, w, pixels)
        if pixels:  # the one conversion copy, then the multiply-add in place
            y = rows.to(dtype)
            torch.addcmul(shift, y, scale, out=y)
        else:
            y = torch.addcmul(shift, rows, scale)
        return y.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last

    def decode(self, x: Tensor) -> Tensor:
        """Undo normalization: x * std + mean."""
        mean, std, _, _ = self._stats(x.device, x.dtype)
        return torch.addcmul(mean, x, std)

    def as_dict(self) -> dict[str, list[float]]:
        """Plain dict for export: {'mean': [...], 'std': [...]}."""
        return {"mean": list(self.mean), "std": list(self.std)}


def format_stats(mean: Iterable[float], std: Iterable[float]) -> str:
    """Statistics as a recipe's `stats` value: "m,m,m/s,s,s" (what `parse_stats` reads)."""
    return "/".join(",".join(repr(float(v)) for v in values) for values in (mean, std))


def parse_stats(text: str) -> tuple[list[float], list[float]]:
    """The (mean, std) written as "m,m,m/s,s,s"; ValueError saying the form otherwise."""
    try:
        mean, std = ([float(v) for v in part.split(",")] for part in text.split("/"))
        norm = Normalize(mean, std)  # checks equal lengths and std > 0
    except ValueError as err:
        raise ValueError(f"stats={text!r} must be imagenet, computed, auto, or statistics written "
                         f"mean/std as 0.485,0.456,0.406/0.229,0.224,0.225 ({err})") from None
    if not all(map(math.isfinite, norm.mean + norm.std)):
        raise ValueError(f"stats={text!r}: every mean and std must be a finite number")
    return norm.mean, norm.std


def compute_stats(batches: Iterable[Tensor]) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std (unbiased, like torch.std) over all pixels of all batches."""
    total, total_sq, count = 0.0, 0.0, 0
    for x in batches:
        if x.ndim != 4:
            raise ValueError(f"compute_stats expects image batches (B, C, H, W), got shape {tuple(x.shape)}")
        x = x.double()  # float64 sums: millions of pixels would lose digits in float32
        total = total + x.sum(dim=(0, 2, 3))  # (C,)
        total_sq = total_sq + (x * x).sum(dim=(0, 2, 3))
        count += x.numel() // x.shape[1]
    if count < 2:
        raise ValueError(f"compute_stats needs at least 2 pixels per channel, got {count}")
    mean = total / count
    var = (total_sq - count * mean * mean) / (count - 1)
    return mean.tolist(), var.clamp(min=0).sqrt().tolist()  # the only host sync
