"""A batch of whole images of different sizes, packed on one uint8 canvas.

Images keep their aspect ratio, so a batch cannot be one (B, 3, h, w) tensor. Each image sits
at the top-left of a shared canvas, landscape: a portrait image is stored transposed, so the
canvas is only as tall as the shortest side (the cache's presize) and as wide as the longest
side in the data. `sizes` says how much of the canvas each image fills, as the image is seen.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Pictures:
    """pixels: uint8 (B, 3, H, W) canvas, channels_last strides; sizes: int64 (B, 2) each image's
    (height, width) as seen; transposed: bool (B,) stored with rows and columns swapped.

    Image i is `pixels[i, :, :h, :w]` (transposed: `pixels[i, :, :w, :h]`, read back with
    `.transpose(-1, -2)`). `sizes` and `transposed` stay on the CPU: the crop boxes are drawn
    there and only the pixels move to the device.
    """

    pixels: Tensor
    sizes: Tensor
    transposed: Tensor

    @classmethod
    def full(cls, pixels: Tensor) -> Pictures:
        """A batch whose images each fill the whole (B, 3, H, W) tensor (squares, or one shape)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected an image batch (B, 3, H, W), got shape {tuple(pixels.shape)}")
        b, _, h, w = pixels.shape
        return cls(pixels, torch.tensor([[h, w]], dtype=torch.int64).expand(b, 2),
                   torch.zeros(b, dtype=torch.bool))

    @classmethod
    def pack(cls, images: Sequence[np.ndarray]) -> Pictures:
        """uint8 (h, w, 3) arrays of any sizes -> one canvas (portrait ones transposed)."""
        if not images:
            raise ValueError("Pictures.pack needs at least one image")
        stored = [stored_view(a) for a in images]
        height = max(s.shape[0] for s in stored)
        width = max(s.shape[1] for s in stored)
        canvas = np.zeros((len(stored), height, width, 3), dtype=np.uint8)
        for i, s in enumerate(stored):
            canvas[i, :s.shape[0], :s.shape[1]] = s
        sizes = torch.tensor([a.shape[:2] for a in images], dtype=torch.int64)
        return cls(torch.from_numpy(canvas).permute(0, 3, 1, 2), sizes, sizes[:, 0] > sizes[:, 1])

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    @property
    def fill_canvas(self) -> bool:
        """Every image fills the whole canvas, unrotated (square data): batch-wide ops apply."""
        h, w = self.pixels.shape[-2:]
        return bool((self.sizes[:, 0] == h).all() and (self.sizes[:, 1] == w).all() and not self.transposed.any())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Pictures:
        """The same batch with its pixels on `device` (sizes stay on the CPU)."""
        return Pictures(self.pixels.to(device, non_blocking=non_blocking), self.sizes, self.transposed)

    def image(self, i: int) -> Tensor:
        """Image i as seen: a (3, h, w) view of the canvas."""
        h, w = self.sizes[i].tolist()
        if self.transposed[i]:
            return self.pixels[i, :, :w, :h].transpose(-1, -2)
        return self.pixels[i, :, :h, :w]

    def select(self, rows: Tensor | Sequence[int]) -> Pictures:
        """The images at `rows` (indices into the batch), same canvas size."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        return Pictures(self.pixels[rows.to(self.device)], self.sizes[rows], self.transposed[rows])


def stored_view(image: np.ndarray) -> np.ndarray:
    """An (h, w, 3) image as the canvas stores it: landscape, a portrait one transposed."""
    return image.transpose(1, 0, 2) if image.shape[0] > image.shape[1] else image


def as_pictures(x: Pictures | Tensor) -> Pictures:
    """Pictures as they are; a plain (B, 3, H, W) tensor as images that fill it."""
    return x if isinstance(x, Pictures) else Pictures.full(x)
