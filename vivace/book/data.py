"""The book's data names: URLs, untar_data, file and label helpers, splitters, DataBlock.

`DataBlock` only gathers the pieces (items, labels, split, sizes, statistics) and hands them to
`vivace.data.make_dataloaders`, which caches, batches and augments as vivace always does.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from vivace import data, show
from vivace.data import Source, make_dataloaders
from vivace.data.datasets import DATASETS, ensure_dataset
from vivace.data.sources import find_images, label_from_parent

from .transforms import AugTransforms, no_augmentation, presize_from, split_batch_tfms, stats_from

DEFAULT_SEED = 42  # fastai's default split draws a new one each call (seed=None); vivace's is fixed


class URLs:
    """The fast.ai dataset archives vivace knows (same addresses as fastai's `URLs`)."""

    IMAGENETTE = DATASETS["imagenette"].url
    IMAGENETTE_160 = DATASETS["imagenette-160"].url
    IMAGENETTE_320 = DATASETS["imagenette-320"].url
    IMAGEWOOF = DATASETS["imagewoof"].url
    IMAGEWOOF_160 = DATASETS["imagewoof-160"].url
    IMAGEWOOF_320 = DATASETS["imagewoof-320"].url


_NAME_BY_URL = {info.url: name for name, info in DATASETS.items()}


def untar_data(url: str) -> Path:
    """The extracted folder of a dataset in the data home, downloaded and extracted only if missing."""
    name = _NAME_BY_URL.get(url, url)
    if name not in DATASETS:
        raise ValueError(f"untar_data({url!r}): vivace knows only the Imagenette and Imagewoof archives "
                         f"(URLs.IMAGENETTE, URLs.IMAGENETTE_160, ...; or a name: {', '.join(DATASETS)})")
    return ensure_dataset(name)


def get_image_files(path: str | Path, recurse: bool = True,
                    folders: Sequence[str] | None = None) -> list[Path]:
    """Image files under `path`, sorted; `folders` limits the search to those sub-folders."""
    roots = [Path(path) / f for f in folders] if folders else [Path(path)]
    files = [f for root in roots for f in find_images(root)]
    if not recurse:
        files = [f for f in files if f.parent in roots]
    return sorted(files)


def get_image_files_sorted(path: str | Path, recurse: bool = True,
                           folders: Sequence[str] | None = None) -> list[Path]:
    """fastbook's helper: get_image_files, sorted (vivace's is sorted already)."""
    return get_image_files(path, recurse, folders)


def parent_label(o: str | Path) -> str:
    """The label of a file: the name of its folder."""
    return label_from_parent(Path(o))


@dataclass(frozen=True)
class RandomSplitter:
    """Hold out a random `valid_pct` of the items; seed None means vivace's fixed seed 42."""

    valid_pct: float = 0.2
    seed: int | None = None

    def __call__(self, items: Sequence[Any]) -> tuple[list[int], list[int]]:
        """(train indices, valid indices), each sorted."""
        if not 0.0 < self.valid_pct < 1.0:
            raise ValueError(f"RandomSplitter(valid_pct={self.valid_pct}) must be strictly between 0 and 1")
        seed = DEFAULT_SEED if self.seed is None else self.seed
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
        cut = int(self.valid_pct * len(items))  # fastai rounds down too
        return sorted(order[cut:]), sorted(order[:cut])


@dataclass(frozen=True)
class GrandparentSplitter:
    """Split by the folder two levels up: `<train_name>/<class>/x.jpg` vs `<valid_name>/<class>/x.jpg`."""

    train_name: str = "train"
    valid_name: str = "valid"  # fastai's default; Imagenette calls it 'val'

    def __call__(self, items: Sequence[str | Path]) -> tuple[list[int], list[int]]:
        """(train indices, valid indices); items under neither folder are left out."""
        grandparents = [Path(o).parent.parent.name for o in items]
        return ([i for i, g in enumerate(grandparents) if g == self.train_name],
                [i for i, g in enumerate(grandparents) if g == self.valid_name])


class ImageBlock:
    """fastai's ImageBlock: the inputs are images (vivace decodes every one to RGB)."""


class CategoryBlock:
    """fastai's CategoryBlock: one class per image; `vocab` fixes the classes and their order."""

    def __init__(self, vocab: Sequence[str] | None = None):
        self.vocab = list(vocab) if vocab is not None else None


class MultiCategoryBlock(CategoryBlock):
    """fastai's MultiCategoryBlock: several classes per image (get_y returns a list), trained with sigmoids."""


Splitter = Callable[[Sequence[Any]], tuple[Sequence[int], Sequence[int]]]


class DataBlock:
    """fastai's DataBlock for single-label image classification, built on `vivace.data`.

    Args:
        blocks: (ImageBlock, CategoryBlock), as classes or instances: the one kind vivace trains.
        get_items: source -> items (image paths); None: the source is the list of items (a
            DataFrame's rows, for a DataFrame).
        get_x: item -> its image path (`ColReader` for a table's rows); None: the item is the path.
        get_y: item -> its class.
        splitter: items -> (train indices, valid indices); default RandomSplitter(0.2, seed=42).
        item_tfms: Resize(n): the side of the centre square each image is cached as (presizing).
        batch_tfms: aug_transforms(...) and, optionally, Normalize.
    """

    def __init__(self, blocks: Sequence[Any] = (ImageBlock, CategoryBlock),
                 get_items: Callable[[Any], Sequence[Any]] | None = None,
                 get_y: Callable[[Any], Any] | None = None, splitter: Splitter | None = None,
                 item_tfms: Any = None, batch_tfms: Any = None, get_x: Callable[[Any], Any] | None = None):
        self.blocks = _check_blocks(blocks)
        if get_y is None:
            raise ValueError("DataBlock needs get_y (e.g. get_y=parent_label) to label each image")
        self.get_items, self.get_x, self.get_y = get_items, get_x, get_y
        self.splitter = splitter if splitter is not None else RandomSplitter(0.2, DEFAULT_SEED)
        self.presize, self.aug, self.normalize = transforms_of(item_tfms, batch_tfms)

    def source(self, source: Any) -> Source:
        """The items, split and labelled: vivace's `Source`."""
        if self.get_items is not None:
            items = list(self.get_items(source))
        else:  # a DataFrame's items are its rows, as in fastai
            items = [row for _, row in source.iterrows()] if hasattr(source, "iterrows") else list(source)
        if not items:
            raise ValueError(f"no items found in {source!r}: check the path and get_items")
        train_idx, valid_idx = self.splitter(items)
        if len(train_idx) == 0 or len(valid_idx) == 0:
            raise ValueError(f"{self.splitter!r} gave {len(train_idx)} training and {len(valid_idx)} "
                             "validation items; both need some (Imagenette's folders are 'train' "
                             "and 'val': GrandparentSplitter(valid_name='val'))")
        train_y = [self.get_y(items[i]) for i in train_idx]
        valid_y = [self.get_y(items[i]) for i in valid_idx]
        multi = isinstance(self.blocks[1], MultiCategoryBlock)
        if multi:  # each label a list: the vocab is over their union
            vocab = _vocab(self.blocks[1].vocab, sorted({v for y in train_y for v in y}), [v for y in valid_y for v in y])
        else:
            vocab = _vocab(self.blocks[1].vocab, train_y, valid_y)
        index = {v: i for i, v in enumerate(vocab)}
        encode = (lambda y: tuple(sorted(index[v] for v in y))) if multi else (lambda y: index[y])
        root = Path(source) if isinstance(source, (str, Path)) else Path(".")
        path_of = self.get_x if self.get_x is not None else (lambda item: item)
        return Source(root=root, vocab=[str(v) for v in vocab],
                      train_files=[Path(path_of(items[i])) for i in train_idx],
                      train_labels=[encode(y) for y in train_y],
                      valid_files=[Path(path_of(items[i])) for i in valid_idx],
                      valid_labels=[encode(y) for y in valid_y], multi_label=multi)

    def summary(self, source: Any) -> None:
        """Print the number of images per class and split."""
        print(self.source(source).summary())

    def dataloaders(self, source: Any, bs: int = 64, val_bs: int | None = None,
                    device: str | torch.device | None = None) -> DataLoaders:
        """vivace DataLoaders: presize cache, batches on the device, augmentation, normalization."""
        return loaders_for(self.source(source), self.presize, self.aug, self.normalize, bs, val_bs, device)


def transforms_of(item_tfms: Any, batch_tfms: Any) -> tuple[int, AugTransforms | None, Any]:
    """(presize, aug_transforms settings, Normalize) from the book's item_tfms and batch_tfms."""
    aug, norm = split_batch_tfms(batch_tfms)
    presize = presize_from(item_tfms) or (aug.size if aug is not None else None)
    if presize is None:
        raise ValueError("the data needs item_tfms=Resize(n) (or an aug_transforms size): vivace "
                         "caches every image as one square size")
    return presize, aug, norm


def loaders_for(source: Source, presize: int, aug: AugTransforms | None, norm: Any, bs: int = 64,
                val_bs: int | None = None, device: str | torch.device | None = None) -> DataLoaders:
    """The book's DataLoaders over a Source: Resize's squares cached, then aug_transforms and Normalize."""
    aug = aug if aug is not None else no_augmentation()
    dls = make_dataloaders(source, size_px=aug.size or presize, presize_px=presize,
                           batch_size=bs, valid_batch_size=val_bs or bs, augment=aug.augment_kwargs(),
                           normalize=norm is not None, stats=stats_from(norm),
                           seed=DEFAULT_SEED, device=device, max_aspect=1.0)  # Resize: squares
    return DataLoaders.of(dls)


class DataLoaders(data.DataLoaders):
    """vivace's DataLoaders with the book's `show_batch` (the core keeps plotting out of `vivace.data`)."""

    @classmethod
    def of(cls, dls: data.DataLoaders) -> DataLoaders:
        return cls(**{f.name: getattr(dls, f.name) for f in fields(dls)})

    def show_batch(self, path: str | Path | None = None, max_n: int = 9, ncols: int = 3):
        """A grid of augmented training images with their labels (saved to `path` if given): a Figure."""
        return show.show_batch(self, path, max_n=max_n, ncols=ncols)


def _check_blocks(blocks: Sequence[Any]) -> tuple[ImageBlock, CategoryBlock]:
    """Instantiate block classes (fastai accepts both) and check they are (ImageBlock, CategoryBlock or
    MultiCategoryBlock)."""
    made = tuple(b() if isinstance(b, type) else b for b in blocks)
    if len(made) != 2 or not isinstance(made[0], ImageBlock) or not isinstance(made[1], CategoryBlock):
        raise ValueError(f"blocks={blocks!r}: vivace trains image classifiers, blocks=(ImageBlock, "
                         "CategoryBlock) or (ImageBlock, MultiCategoryBlock)")
    return made


def _vocab(given: list | None, train_y: list, valid_y: list) -> list:
    """The classes: `given`, else the sorted training labels (as fastai's CategoryMap)."""
    vocab = given if given is not None else sorted(set(train_y))
    unknown = sorted(set(train_y + valid_y) - set(vocab), key=str)
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the classes {vocab[:10]} (from "
                         f"{'CategoryBlock(vocab=...)' if given is not None else 'the training split'})")
    return vocab
