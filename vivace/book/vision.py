"""The small image helpers the book's Mixup figure uses: PILImage, tensor, show_image, plt."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # the book draws with pyplot (plt.subplots)
import numpy as np
import torch
from PIL import Image
from torch import Tensor


class PILImage:
    """fastai's `PILImage.create(fn)`: open an image file as an RGB PIL image."""

    @staticmethod
    def create(fn: str | Path) -> Image.Image:
        """The image at `fn`, decoded to RGB (a plain `PIL.Image.Image`)."""
        with Image.open(fn) as img:
            return img.convert("RGB")


def tensor(x: Any) -> Tensor:
    """fastai's `tensor`: a PIL image or array as a tensor (H, W, C) of its dtype; lists via torch.tensor."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (Image.Image, np.ndarray)):
        return torch.from_numpy(np.array(x))  # a copy: PIL's buffer is read-only
    return torch.tensor(x)


def show_image(im: Any, ax: Any = None, figsize: tuple[float, float] | None = None,
               title: str | None = None, **kwargs: Any) -> Any:
    """fastai's `show_image`: draw a tensor (C, H, W) or (H, W, C), array or PIL image on `ax`; return ax."""
    if isinstance(im, Tensor):
        im = im.detach().cpu()
        if im.ndim == 3 and im.shape[0] < 5:  # channels first, as fastai guesses
            im = im.permute(1, 2, 0)
    im = np.asarray(im)
    if im.ndim == 3 and im.shape[-1] == 1:
        im = im[..., 0]
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    ax.imshow(im, **kwargs)
    if title is not None:
        ax.set_title(title)
    ax.axis("off")
    return ax
