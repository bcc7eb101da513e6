"""Data pipeline benchmark: presize cache + batch augmentation vs a per-image Pillow DataLoader.

    python -m bench pipeline --data PATH --limit 3000 --n-batches 30

Prints images/s for
  (a) building the presize cache of the train split (fresh temporary cache directory),
  (b) serving augmented, normalized batches from it through BatchLoader (also printed: the
      uint8 batches alone, i.e. the loader's own ceiling without augmentation),
  (c) the reference: torch DataLoader, 2 worker processes, each item a Pillow JPEG decode +
      random-resized-crop + flip -> float tensor (torchvision's recipe, written with Pillow),
and the speedup (b)/(c). --min-speedup makes it exit non-zero under a target.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vivace.data.cache import MAX_ASPECT, build_cache
from vivace.data.loader import BatchLoader
from vivace.data.sources import find_images
from vivace.runtime import reuse_freed_memory

from .common import add_data_arg, data_folder, make_parser

WARMUP_BATCHES = 3  # not timed: thread/worker start-up, first-touch of pages, allocator warm-up
RRC_SCALE = (0.35, 1.0)  # fastai's min_scale, same as TrainAugment's default
RRC_RATIO = (3 / 4, 4 / 3)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = make_parser("pipeline", __doc__)
    add_data_arg(p)
    p.add_argument("--presize", type=int, default=160, help="cache: shorter side, px")
    p.add_argument("--max-aspect", type=float, nargs="+", default=[MAX_ASPECT],
                   help="cache: longest/shortest side kept whole; several values are measured side "
                        "by side (1 = the centre-square cache vivace had before 2026-12-05)")
    p.add_argument("--size", type=int, default=128, help="training crop side, px")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--n-batches", type=int, default=30, help="timed batches for (b) and (c)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many train images")
    p.add_argument("--workers", type=int, default=None, help="cache build processes (all CPUs)")
    p.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers for (c)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--min-speedup", type=float, default=None, help="fail if (b)/(c) is lower")
    p.add_argument("--no-reuse-memory", action="store_true",
                   help="keep glibc's allocator defaults (vivace train reuses freed memory)")
    args = p.parse_args(argv)
    args.data = data_folder(p.prog, args.data)
    return args


def train_files(root: Path, limit: int | None) -> tuple[list[Path], np.ndarray]:
    """The train split's files (a seeded random subset of `limit`) and integer labels."""
    files = find_images(root / "train")
    if not files:
        raise SystemExit(f"no images under {root / 'train'}; pass --data")
    if limit is not None and limit < len(files):
        keep = np.sort(np.random.default_rng(0).permutation(len(files))[:limit])
        files = [files[i] for i in keep]
    classes = sorted({f.parent.name for f in files})
    labels = np.array([classes.index(f.parent.name) for f in files], dtype=np.int64)
    return files, labels


def make_augments(size: int) -> dict[str, Callable[[Tensor], Tensor]]:
    """vivace's training transforms: the reference's own augmentation, and fastai's full set."""
    from vivace.augment import TrainAugment
    from vivace.data import Pipeline
    from vivace.normalize import Normalize
    normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    crop_flip = TrainAugment(size, min_scale=RRC_SCALE[0], ratio=RRC_RATIO, max_rotate_deg=0.0, max_zoom=1.0,
                             max_warp=0.0, p_affine=0.0, max_lighting=0.0, p_lighting=0.0, seed=0)
    full = TrainAugment(size, min_scale=RRC_SCALE[0], seed=0)
    # The loaders' own transform (make_dataloaders): augment, then Normalize.
    return {"RRC + flip, as (c)": Pipeline(crop_flip, normalize),
            "aug_transforms: RRC, flip, rotate, zoom, warp, lighting": Pipeline(full, normalize),
            "RRC + flip as one grid_sample (the CUDA path)": grid_sample_crop_flip(size, normalize)}


def grid_sample_crop_flip(size: int, normalize: Callable[[Tensor], Tensor]) -> Callable:
    """The same crops and flips as one bilinear `grid_sample` over the batch, as TrainAugment does
    on CUDA: timed here beside the CPU path's per-image uint8 resize (`crop_resize`)."""
    from vivace.augment import crop_matrices, flip_signs, random_resized_crop_params, resample_pictures
    from vivace.pictures import as_pictures
    generator = torch.Generator().manual_seed(0)

    def transform(x) -> Tensor:
        p = as_pictures(x)
        boxes = random_resized_crop_params(p.sizes, RRC_SCALE, RRC_RATIO, generator)
        return normalize(resample_pictures(p, crop_matrices(boxes, flip_signs(len(p), 0.5, generator)), size))
    return transform


def timed_batches(batches: Callable[[], Iterable], n_batches: int, device: torch.device) -> float:
    """Images/s over `n_batches` after WARMUP_BATCHES, cycling epochs if needed."""
    done, images, start = 0, 0, 0.0
    while done < n_batches + WARMUP_BATCHES:
        for x, _ in batches():
            if done == WARMUP_BATCHES:
                _sync(device)
                start, images = time.perf_counter(), 0
            images += len(x)
            done += 1
            if done == n_batches + WARMUP_BATCHES:
                break
    _sync(device)  # CUDA work is asynchronous: wait before reading the clock
    return images / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PillowRRC(Dataset):
    """Reference: per item decode, random-resized-crop + flip with Pillow, to a float tensor."""

    def __init__(self, files: list[Path], labels: np.ndarray, size: int) -> None:
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        with Image.open(self.files[i]) as img:
            img = img.convert("RGB")
            box = rrc_box(*img.size)
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)
        return x, int(self.labels[i])


def rrc_box(w: int, h: int) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop box: area and log-aspect uniform, 10 tries, else centre."""
    for _ in range(10):
        area = w * h * random.uniform(*RRC_SCALE)
        aspect = math.exp(random.uniform(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])))
        cw, ch = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if cw <= w and ch <= h:
            left, top = random.uniform(0, w - cw), random.uniform(0, h - ch)
            return (left, top, left + cw, top + ch)
    side = min(w, h)
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)


def reference_batches(files: list[Path], labels: np.ndarray, args: argparse.Namespace,
                      device: torch.device) -> Callable[[], Iterable]:
    """A fresh DataLoader epoch (normalized on the device, like (b)) per call."""
    loader = DataLoader(PillowRRC(files, labels, args.size), batch_size=args.bs, shuffle=True,
                        num_workers=args.ref_workers, drop_last=True, persistent_workers=True,
                        pin_memory=device.type == "cuda")
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def epoch() -> Iterable:
        for x, y in loader:
            yield (x.to(device, non_blocking=True) - mean) / std, y.to(device, non_blocking=True)

    return epoch


def cache_rates(files: list[Path], labels: np.ndarray, args: argparse.Namespace, device: torch.device,
                max_aspect: float) -> dict[str, float]:
    """Print and return (a) and (b) for a fresh cache with `max_aspect`."""
    with tempfile.TemporaryDirectory(prefix="vivace-bench-cache-") as cache_dir:
        start = time.perf_counter()
        cache = build_cache(files, args.presize, Path(cache_dir), args.workers, progress=False, max_aspect=max_aspect)
        build_rate = len(files) / (time.perf_counter() - start)
        print(f"max_aspect {max_aspect:g}: canvas {cache.presize} x {cache.width} px")
        print(f"(a) cache build:          {build_rate:8.0f} img/s  ({len(cache.skipped)} skipped)")
        loader = BatchLoader(cache, np.arange(len(cache)), labels, args.bs, shuffle=True,
                             drop_last=True, device=device)
        raw_rate = timed_batches(lambda: iter(loader), args.n_batches, device)
        print(f"    uint8 batches only:   {raw_rate:8.0f} img/s  (BatchLoader, no transform)")
        rates = {}
        for name, augment in make_augments(args.size).items():
            loader.transform = augment
            rates[name] = timed_batches(lambda: iter(loader), args.n_batches, device)
            print(f"(b) cache + BatchLoader:  {rates[name]:8.0f} img/s  ({name}, Normalize)")
    return rates


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if not args.no_reuse_memory:
        reuse_freed_memory()  # as `vivace train` does; inherited by the reference's forked workers
    device = torch.device(args.device)
    files, labels = train_files(args.data, args.limit)
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"Pillow {PIL.__version__}, numpy {np.__version__}; {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, device {device}")
    print(f"data {args.data}: {len(files)} train images; presize {args.presize}, size {args.size}, "
          f"bs {args.bs}, {args.n_batches} timed batches")

    for max_aspect in args.max_aspect:  # the last one's rates are compared with (c)
        rates = cache_rates(files, labels, args, device, max_aspect)
    ref_rate = timed_batches(reference_batches(files, labels, args, device), args.n_batches, device)
    print(f"(c) Pillow DataLoader:    {ref_rate:8.0f} img/s  ({args.ref_workers} workers, "
          "Pillow RRC + flip)")
    speedup = rates["RRC + flip, as (c)"] / ref_rate
    print(f"speedup (b)/(c), same augmentation: {speedup:.2f}x; with all of aug_transforms: "
          f"{list(rates.values())[1] / ref_rate:.2f}x")
    if args.min_speedup is not None and speedup < args.min_speedup:
        raise SystemExit(f"speedup {speedup:.2f}x is under the target {args.min_speedup}x")


if __name__ == "__main__":
    main(sys.argv[1:])
