"""Data: image folders -> presize cache -> batches on the device -> augmented, normalized tensors."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..augment import TrainAugment
from ..flags import Range, knob
from ..normalize import Normalize, compute_stats, imagenet_stats, parse_stats
from ..views import ValidResize, ValidView, resolve_valid_view
from .cache import MAX_ASPECT, MAX_PRESIZE_PX, ImageCache, build_cache
from .datasets import data_home, embedded_path, resolve_data
from .loader import BatchLoader
from .pipeline import Pipeline
from .resident import DATA_ON_DEVICE, DataOnDevice, DeviceCache, choose_data_on_device
from .sources import Source, make_source
from .table import table_source
from .eval_view import EvalView

STATS_SAMPLE = 1024  # training images used to compute normalization statistics
STATS_NAMES = ("auto", "imagenet", "computed")


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
    def multi_label(self) -> bool:
        """Several labels per image: targets are multi-hot (B, C), the model's outputs sigmoids."""
        return self.source.multi_label

    @property
    def eval_view(self) -> EvalView:
        """How validation shows an image to the model: the one value TTA, export and predict use."""
        resize = self.valid.transform.resize
        return EvalView(resize.size, resize.crop, resize.square, self.cache.presize, self.cache.max_aspect,
                        self.normalize)

    def set_normalize(self, normalize: Normalize | None) -> None:
        """Normalize both loaders' batches with `normalize` from now on (None: pixels in [0, 1])."""
        self.normalize = self.train.transform.normalize = self.valid.transform.normalize = normalize

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


@dataclass
class DataSpec:
    """The Recipe's data: `make_dataloaders`' keyword arguments of the same names."""

    data: str = knob("", 'dataset name (imagenette, imagewoof-160, ...) or folder; "" = embedded')
    valid_name: str = knob("", 'validation folder beside train/ in --data; "" = val or valid')
    labels: str = knob("", 'label table (CSV): a row per image, paths relative to --data; "" = label by folder',
                       aliases=("csv",))
    fn_col: str = knob("", 'the table\'s image-path column, by name or index; "" = the first')
    label_col: str = knob("", 'the table\'s label column, by name or index; "" = the second')
    valid_col: str = knob("", 'the table\'s True/False column marking validation rows; "" = a random 20 % split')
    label_delim: str = knob("", 'several labels per image: the delimiter in the table\'s label cells (" " or ";"); '
                                '"" = one label each')
    multi_label: bool = knob(False, "sigmoid outputs and binary cross-entropy, each image's labels a set (one "
                                    "from a folder or an undelimited table); --label-delim implies it")
    size_px: int = knob(128, "final training and validation crop size, px", aliases=("size",),
                        range=Range(1, MAX_PRESIZE_PX))
    presize_px: int = knob(160, "shorter side of the cached images, px (>= size_px)", aliases=("presize",),
                           range=Range(1, MAX_PRESIZE_PX))
    max_aspect: float = knob(MAX_ASPECT, "longer side / shorter side the cache keeps whole; 1 = centre squares",
                             range=Range(1.0, 100.0))
    valid_size_px: int = knob(0, "validation (and export) crop side, px; 0 = size_px (FixRes: test a bit larger)",
                              aliases=("valid_size",), range=Range(0))
    valid_crop: float = knob(1.0, "central fraction of each side validation shows; 0 = fastai's (0.842 at 128 px)",
                             range=Range(0.0, 1.0))
    valid_view: ValidView = knob("auto", "squash (whole image: fastai's RandomResizedCrop) or square "
                                         "(centre: Resize); auto: train_crop's")
    batch_size: int = knob(64, "training batch size (global, over all processes)", aliases=("bs",), range=Range(1))
    valid_batch_size: int = knob(0, "evaluation batch size; 0 = 128 on a CPU, twice the training batch (at least "
                                    "128) on CUDA", aliases=("valid_bs",), range=Range(0))
    normalize: bool = knob(True, "normalize inputs by channel statistics")
    stats: str = knob("auto", "imagenet; computed (from a sample of the training set); given as mean/std "
                              "(0.5,0.5,0.5/0.25,0.25,0.25); auto: the --init model's, else imagenet")
    data_on_device: DataOnDevice = knob("auto", "keep the cache in device memory: auto (a CUDA device it "
                                                "fits on), on, off")


def make_dataloaders(data: str | Path | Source | None = None, *, size_px: int = 128, presize_px: int = 160,
                     max_aspect: float = MAX_ASPECT, valid_size_px: int = 0, valid_crop: float = 1.0,
                     valid_view: ValidView = "auto", batch_size: int = 64, valid_batch_size: int = 0,
                     normalize: bool = True, stats: str | tuple = "auto", data_on_device: DataOnDevice = "auto",
                     valid_name: str = "", labels: str | Path | Any = "", fn_col: str = "", label_col: str = "",
                     valid_col: str = "", label_delim: str = "", multi_label: bool = False,
                     augment: dict[str, Any] | None = None, seed: int = 42,
                     device: torch.device | str | None = None, rank: int = 0, world_size: int = 1,
                     workers: int = 0, cache_dir: Path | None = None, progress: bool = True) -> DataLoaders:
    """Build the cache (once) and the two loaders; the keywords up to `multi_label` are `DataSpec`'s.

    Args:
        data: a dataset name, a folder, or a Source; None or "" = the embedded Imagenette subset.
        labels, fn_col, label_col, valid_col: a label table (a CSV path, under `data` or not, or a
            pandas DataFrame) and its columns, instead of labels by folder (`vivace.data.table`);
            with `label_delim`, several labels per image (multi-hot targets).
        multi_label: multi-hot targets even with one label per image (trained with sigmoids and BCE).
        valid_size_px: the validation crop side; 0 = size_px (larger tests the training crops'
            apparent object size, FixRes).
        valid_crop, valid_view: how validation shows an image (`vivace.views.resolve_valid_view`:
            auto = the training crop's view, valid_crop 0 = fastai's fraction for it).
        valid_batch_size: 0 = `eval_batch_size(batch_size, device)`.
        augment: keyword arguments for TrainAugment (`AugmentSpec`'s fields, ratio, ...).
        stats: 'imagenet' (or 'auto': the Recipe resolves it to an --init model's), 'computed' (from a
            sample of the training set), or given: a (mean, std) pair or "m,m,m/s,s,s".
        data_on_device: 'auto' (on a CUDA device when the cache fits), 'on' or 'off': batches are
            gathered from a copy of the cache in device memory instead of prefetched from the host
            (`vivace.data.resident`); the batches are the same.
        rank, world_size: this process's shard under torchrun; `batch_size` is per process here.
        workers: processes for building the cache; 0 = all cores.
        progress: print the split used and the cache's progress bar (rank 0 of a distributed run).
    """
    augment = augment or {}
    view, crop = resolve_valid_view(valid_view, valid_crop, valid_size_px or size_px,
                                    augment.get("train_crop", "random_resized"))
    source = data if isinstance(data, Source) else data_source(data, valid_name, labels, fn_col, label_col, valid_col,
                                                               label_delim)
    if multi_label and not source.multi_label:
        source = source.as_multi_label()
    device = torch.device(device) if device is not None else _default_device()
    cache = build_cache(source.train_files + source.valid_files, presize_px, cache_dir, workers or None, progress,
                        max_aspect)
    n_train = len(source.train_files)
    train_idx, train_y = _usable(cache, np.arange(n_train), source.label_array(source.train_labels))
    valid_idx, valid_y = _usable(cache, np.arange(n_train, len(cache)), source.label_array(source.valid_labels))
    _check_usable(train_idx, valid_idx, source)
    source = replace(source, split_note=_used_note(source, len(train_idx), len(valid_idx)))
    if progress and source.split_note:
        print(source.split_note, flush=True)
    resident, line = choose_data_on_device(data_on_device, cache, device)
    if progress and line:
        print(line, flush=True)
    batches_from = DeviceCache(cache, device) if resident else cache
    train = BatchLoader(batches_from, train_idx, train_y, batch_size, shuffle=True, drop_last=True, seed=seed,
                        device=device, rank=rank, world_size=world_size)
    valid = BatchLoader(batches_from, valid_idx, valid_y, valid_batch_size or eval_batch_size(batch_size, device),
                        shuffle=False, drop_last=False, device=device, rank=rank, world_size=world_size)
    train.set_batch_size(min(batch_size, max(len(train_idx) // world_size, 1)))  # tiny data: >= one batch
    norm = _make_normalize(normalize, stats, cache, train_idx, size_px, device)
    train.transform = Pipeline(TrainAugment(size_px, seed=seed, **augment), norm)
    valid.transform = Pipeline(ValidResize(valid_size_px or size_px, crop, view == "square"), norm)
    return DataLoaders(train, valid, source.vocab, norm, source, cache)


def data_source(data: str | Path | None, valid_name: str = "", labels: str | Path | Any = "", fn_col: str = "",
                label_col: str = "", valid_col: str = "", label_delim: str = "") -> Source:
    """The images, labels and split of `data`: from its folders, or from a label table."""
    root = resolve_data(data or None)
    if isinstance(labels, (str, Path)) and str(labels) == "":
        return make_source(root, valid_name=valid_name)
    return table_source(root, labels, fn_col, label_col, valid_col, label_delim)


def eval_batch_size(batch_size: int, device: torch.device | str) -> int:
    """`valid_batch_size=0`: 128 on a CPU (where larger batches gained nothing); on CUDA twice the
    training batch, at least 128 (no gradients or saved activations: far less memory per image)."""
    return max(128, 2 * batch_size) if torch.device(device).type == "cuda" else 128


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _usable(cache: ImageCache, positions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop images the cache could not decode (they were reported when it was built)."""
    keep = cache.ok[positions]
    return positions[keep], labels[keep]


def _used_note(source: Source, n_train: int, n_valid: int) -> str:
    """The split line, told how many images are used when some could not be read (the cache skipped them)."""
    left_out = len(source.train_files) + len(source.valid_files) - n_train - n_valid
    if not left_out or not source.split_note:
        return source.split_note
    return (f"{source.split_note}; {left_out:,} unreadable {'image' if left_out == 1 else 'images'} left out: "
            f"{n_train:,} train and {n_valid:,} validation images used")


def _check_usable(train_idx: np.ndarray, valid_idx: np.ndarray, source: Source) -> None:
    if len(train_idx) == 0 or len(valid_idx) == 0:
        raise ValueError(f"no readable images left in the {'training' if len(train_idx) == 0 else 'validation'} "
                         f"split of {source.root}: every file failed to decode (see the warning above)")


def _make_normalize(normalize: bool, stats: str | tuple, cache: ImageCache, train_idx: np.ndarray,
                    size: int, device: torch.device) -> Normalize | None:
    if not normalize:
        return None
    if stats in ("auto", "imagenet"):
        return Normalize.from_stats(*imagenet_stats)
    if stats == "computed":
        return Normalize(*sample_stats(cache, train_idx, size, device))
    mean, std = parse_stats(stats) if isinstance(stats, str) else stats
    return Normalize(mean, std)


def sample_stats(cache: ImageCache, indices: np.ndarray, size: int, device: torch.device,
                 n: int = STATS_SAMPLE, seed: int = 0) -> tuple[list[float], list[float]]:
    """Channel mean/std over up to `n` training images (not one batch: more robust)."""
    chosen = np.sort(np.random.default_rng(seed).permutation(indices)[:n])
    resize = ValidResize(size)
    batches = (resize(cache.gather(chosen[i:i + 256]).to(device)) for i in range(0, len(chosen), 256))
    return compute_stats(batches)


__all__ = ["DataSpec", "DataLoaders", "data_source", "eval_batch_size", "Pipeline", "EvalView", "make_dataloaders", "make_source", "Source", "build_cache",
           "ImageCache", "BatchLoader", "DeviceCache", "DATA_ON_DEVICE", "data_home", "embedded_path", "resolve_data", "sample_stats"]
