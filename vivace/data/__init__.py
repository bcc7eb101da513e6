"""Data: image folders -> presize cache -> batches on the device -> augmented, normalized tensors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..augment import VALID_VIEWS, TrainAugment, ValidResize, fastai_valid_crop
from ..normalize import Normalize, compute_stats, imagenet_stats
from .cache import MAX_ASPECT, ImageCache, build_cache
from .datasets import data_home, embedded_path, resolve_data
from .loader import BatchLoader
from .pipeline import Pipeline
from .resident import DATA_ON_DEVICE, DeviceCache, choose_data_on_device
from .sources import Source, make_source
from .view import EvalView

STATS_SAMPLE = 1024  # training images used to compute normalization statistics


@dataclass
class DataLoaders:
    """Training and validation loaders over one cache, plus the class vocabulary and statistics."""

    train: BatchLoader
    valid: BatchLoader
    vocab: list[str]
    normalize: Normalize | None
    source: Source
    cache: ImageCache

    @property
    def device(self) -> torch.device:
        return self.train.device

    @property
    def c(self) -> int:
        return len(self.vocab)

    @property
    def eval_view(self) -> EvalView:
        """How validation shows an image to the model: the one value TTA, export and predict use."""
        resize = self.valid.transform.resize
        return EvalView(resize.size, resize.crop, resize.square, self.cache.presize, self.cache.max_aspect,
                        self.normalize)

    def one_batch(self) -> tuple[Tensor, Tensor]:
        """The first augmented training batch: x (B, 3, S, S) float, y (B,)."""
        return next(iter(self.train))

    def state_dict(self) -> dict[str, Any]:
        """The augmentation RNG state, so a resumed run draws the same augmentations."""
        gen = self.train.transform.resize.generator
        return {"augment_rng": gen.get_state() if gen is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        gen = self.train.transform.resize.generator
        if gen is not None and state.get("augment_rng") is not None:
            gen.set_state(state["augment_rng"])


def make_dataloaders(data: str | Path | Source | None = None, *, size: int = 128,
                     valid_size: int | None = None, valid_crop: float = 1.0, presize: int = 160,
                     bs: int = 64, valid_bs: int = 128, augment: dict[str, Any] | None = None,
                     normalize: bool = True, stats: str | tuple = "imagenet", seed: int = 42,
                     device: torch.device | str | None = None, rank: int = 0, world_size: int = 1,
                     workers: int | None = None, cache_dir: Path | None = None,
                     progress: bool = True, valid_name: str = "",
                     max_aspect: float = MAX_ASPECT, valid_view: str = "auto",
                     data_on_device: str = "auto") -> DataLoaders:
    """Build the cache (once) and the two loaders.

    Args:
        data: a dataset name, a folder, or a Source; None = the embedded Imagenette subset.
        valid_size: the validation crop side; None = size (larger tests the training crops'
            apparent object size, FixRes).
        valid_crop: the central fraction of each side that validation shows (`ValidResize`);
            1 = all of it, 0 = fastai's (`fastai_valid_crop`, 0.842 at 128 px; 1 for the square view).
        valid_view: 'squash' (the whole image squashed, fastai's RandomResizedCrop), 'square' (its
            central square, fastai's Resize) or 'auto' (square when augment's crop is 'square').
        augment: keyword arguments for TrainAugment (min_scale, max_rotate, ...).
        stats: 'imagenet', 'computed' (from a sample of the training set) or a (mean, std) pair.
        progress: print the split used and the cache's progress bar (rank 0 of a distributed run).
        valid_name: the validation folder beside train/; "" = val/ or valid/ (see `make_source`).
        max_aspect: the longest side / shortest side the cache keeps whole (1 = centre squares).
        data_on_device: 'auto' (on a CUDA device when the cache fits), 'on' or 'off': batches are
            gathered from a copy of the cache in device memory instead of prefetched from the host
            (`vivace.data.resident`); the batches are the same.
    """
    if valid_view not in VALID_VIEWS:
        raise ValueError(f"valid_view={valid_view!r} is not one of: {', '.join(VALID_VIEWS)}")
    source = data if isinstance(data, Source) else make_source(resolve_data(data), valid_name=valid_name)
    if progress and source.split_note:
        print(source.split_note, flush=True)
    device = torch.device(device) if device is not None else _default_device()
    cache = build_cache(source.train_files + source.valid_files, presize, cache_dir, workers, progress,
                        max_aspect)
    n_train = len(source.train_files)
    train_idx, train_y = _usable(cache, np.arange(n_train), source.train_labels)
    valid_idx, valid_y = _usable(cache, np.arange(n_train, len(cache)), source.valid_labels)
    _check_usable(train_idx, valid_idx, source)
    resident, line = choose_data_on_device(data_on_device, cache, device)
    if progress and line:
        print(line, flush=True)
    batches_from = DeviceCache(cache, device) if resident else cache
    train = BatchLoader(batches_from, train_idx, train_y, bs, shuffle=True, drop_last=True, seed=seed,
                        device=device, rank=rank, world_size=world_size)
    valid = BatchLoader(batches_from, valid_idx, valid_y, valid_bs, shuffle=False, drop_last=False,
                        device=device, rank=rank, world_size=world_size)
    train.set_batch_size(min(bs, max(len(train_idx) // world_size, 1)))  # tiny data: >= one batch
    norm = _make_normalize(normalize, stats, cache, train_idx, size, device)
    train.transform = Pipeline(TrainAugment(size, seed=seed, **(augment or {})), norm)
    valid_size = valid_size or size
    # auto: as in fastai, the training crop decides the view (Resize validates on the centre square).
    square = valid_view == "square" or (valid_view == "auto" and (augment or {}).get("crop") == "square")
    valid_crop = valid_crop or (1.0 if square else fastai_valid_crop(valid_size))  # 0: fastai's view
    valid.transform = Pipeline(ValidResize(valid_size, valid_crop, square), norm)
    return DataLoaders(train, valid, source.vocab, norm, source, cache)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _usable(cache: ImageCache, positions: np.ndarray, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Drop images the cache could not decode (they were reported when it was built)."""
    keep = cache.ok[positions]
    return positions[keep], np.asarray(labels, dtype=np.int64)[keep]


def _check_usable(train_idx: np.ndarray, valid_idx: np.ndarray, source: Source) -> None:
    if len(train_idx) == 0 or len(valid_idx) == 0:
        raise ValueError(f"no readable images left in the {'training' if len(train_idx) == 0 else 'validation'} "
                         f"split of {source.root}: every file failed to decode (see the warning above)")


def _make_normalize(normalize: bool, stats: str | tuple, cache: ImageCache, train_idx: np.ndarray,
                    size: int, device: torch.device) -> Normalize | None:
    if not normalize:
        return None
    if stats == "imagenet":
        return Normalize.from_stats(*imagenet_stats)
    if stats == "computed":
        return Normalize(*sample_stats(cache, train_idx, size, device))
    mean, std = stats
    return Normalize(mean, std)


def sample_stats(cache: ImageCache, indices: np.ndarray, size: int, device: torch.device,
                 n: int = STATS_SAMPLE, seed: int = 0) -> tuple[list[float], list[float]]:
    """Channel mean/std over up to `n` training images (not one batch: more robust)."""
    chosen = np.sort(np.random.default_rng(seed).permutation(indices)[:n])
    resize = ValidResize(size)
    batches = (resize(cache.gather(chosen[i:i + 256]).to(device)) for i in range(0, len(chosen), 256))
    return compute_stats(batches)


__all__ = ["DataLoaders", "Pipeline", "EvalView", "make_dataloaders", "make_source", "Source", "build_cache",
           "ImageCache", "BatchLoader", "DeviceCache", "DATA_ON_DEVICE", "data_home", "embedded_path", "resolve_data", "sample_stats"]
