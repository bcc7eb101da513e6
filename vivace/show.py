"""Pictures of the chapter: a training batch, one image's augmentations, and Mixup's blend.

Every figure is a `vivace.figures.Figure`: a matplotlib Figure without pyplot (no global state,
safe without a display) that a notebook shows when a cell returns it; saved as PNG when a path
is given.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .augment import TrainAugment
from .views import ValidResize
from .pictures import Pictures, as_pictures
from .normalize import Normalize
from .data import DataLoaders
from .data.names import display_names
from .mixing import mix_targets


def mixup_figure(a: Tensor, b: Tensor, lam: float, target: Tensor, vocab: list[str],
                 labels: tuple[str, str], path: Path | None = None):
    """The book's Mixup figure: image a, image b, their blend lam*a + (1-lam)*b, and the soft target.

    Args:
        a, b: float images (3, H, W) in [0, 1].
        target: the blend's soft target (C,), summing to 1.
    """
    from .figures import Figure
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} must be in [0, 1]")
    blend = torch.lerp(b, a, lam)  # lam * a + (1 - lam) * b
    fig = Figure(figsize=(13, 3.4))
    panels = [(a, labels[0]), (b, labels[1]), (blend, f"mixup, lam={lam:g}")]
    for i, (img, title) in enumerate(panels):
        ax = fig.add_subplot(1, 4, i + 1)
        ax.imshow(img.clamp(0, 1).permute(1, 2, 0).cpu().numpy())
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(1, 4, 4)
    y = np.arange(len(vocab))[::-1]
    ax.barh(y, target.cpu().numpy(), color="tab:orange")
    ax.set_yticks(y, vocab, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_title("soft target", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(Path(path), format="png")
    return fig


def two_classes(labels: np.ndarray) -> tuple[int, int]:
    """Positions of the first item and of the first one with a different label."""
    others = np.flatnonzero(labels != labels[0])
    if len(others) == 0:
        raise ValueError("mixup's picture needs two classes, but every validation image has the same label")
    return 0, int(others[0])


def show_mixup(dls: DataLoaders, path: Path | None = None, lam: float = 0.7):
    """Two validation images of different classes, their Mixup blend and soft target."""
    i, j = two_classes(dls.valid.labels)
    raw = dls.cache.gather(dls.valid.indices[[i, j]])  # uint8 Pictures, 2 images
    a, b = ValidResize(dls.valid.size)(raw)  # float (3, S, S) each, in [0, 1]
    y = torch.from_numpy(dls.valid.labels[[i, j]])
    # The library's own target mixing: item 0 keeps weight lam, its partner (perm) gets 1 - lam.
    target = mix_targets(y, dls.c, torch.tensor([lam, lam]), torch.tensor([1, 0]))[0]
    names = display_names(dls.vocab)
    labels = (f"{names[y[0]]} ({lam:g})", f"{names[y[1]]} ({1 - lam:g})")
    return mixup_figure(a, b, lam, target, names, labels, path)


def show_augs(dls: DataLoaders, path: Path | None = None, n: int = 8):
    """The first training image under n draws of the training augmentation."""
    x = dls.cache.gather(dls.train.indices[:1])  # uint8 Pictures, 1 image
    return augmentation_grid(x, dls.train.transform.resize, n=n, path=path)


def show_batch(dls: DataLoaders, path: Path | None = None, max_n: int = 9, ncols: int = 3):
    """A grid of augmented training images with their labels (saved to `path` if given)."""
    x, y = dls.one_batch()
    names = display_names(dls.vocab)
    labels = [names[i] for i in y[:max_n].tolist()]
    return image_grid(x[:max_n].cpu(), labels, path=path, normalize=dls.normalize, ncols=ncols)


def image_grid(x: Tensor, labels: list[str], path: Path | None = None,
               normalize: Normalize | None = None, ncols: int = 4):
    """Grid of images (B, 3, H, W) titled by labels; saved as PNG when path is given."""
    from .figures import Figure  # no pyplot: no global state, safe without a display
    x = x if normalize is None else normalize.decode(x)
    imgs = x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    ncols = max(1, min(ncols, len(imgs)))
    nrows = max(1, math.ceil(len(imgs) / ncols))
    if len(labels) != len(imgs):
        raise ValueError(f"image_grid got {len(labels)} labels for {len(imgs)} images")
    fig = Figure(figsize=(2.5 * ncols, 2.5 * nrows))
    for i, (img, label) in enumerate(zip(imgs, labels)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(img)
        ax.set_title(str(label), fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    if path is not None:
        fig.savefig(Path(path), format="png")
    return fig


def augmentation_grid(x: Pictures | Tensor, augment: TrainAugment, n: int = 8, path: Path | None = None):
    """The first image of `x` (Pictures, or a (B, 3, H, W) batch) augmented n times, shown as a grid."""
    batch = as_pictures(x).select([0] * n)
    return image_grid(augment(batch), [f"aug {i}" for i in range(n)], path)
