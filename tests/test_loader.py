"""Tests for vivace.data.loader: shuffling, sharding, drop_last, prefetch thread lifecycle."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivace.views import fastai_valid_crop
from vivace.data import make_dataloaders
from vivace.data.cache import ImageCache, build_cache
from vivace.data.loader import BatchLoader, shard_indices

N = 23  # prime: no batch size or world size divides it
P = 4


def _cache(n: int = N) -> ImageCache:
    """An in-memory cache whose image i is filled with the value i (so batches are readable)."""
    pixels = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, P, P, 3))
    return ImageCache(Path("."), np.ascontiguousarray(pixels), np.ones(n, bool), [])


def _loader(**kwargs) -> BatchLoader:
    args = {"batch_size": 5, "shuffle": True, "drop_last": False, "seed": 0}
    args.update(kwargs)
    cache = args.pop("cache", _cache())
    indices = np.arange(len(cache))
    return BatchLoader(cache, indices, 100 + indices, **args)


def _ids(loader: BatchLoader) -> list[list[int]]:
    """Image ids of each batch, checking labels travel with their images."""
    out = []
    for x, y in loader:
        ids = x.pixels[:, 0, 0, 0].long()
        assert torch.equal(y, 100 + ids) and y.dtype == torch.int64
        out.append(ids.tolist())
    return out


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_validation_shards_disjoint_and_complete(world_size, shuffle):
    shards = [shard_indices(N, 1, 0, shuffle, r, world_size, False, 4) for r in range(world_size)]
    joined = np.concatenate(shards)
    assert len(joined) == N and sorted(joined.tolist()) == list(range(N))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_training_shards_equal_full_batches(world_size):
    bs = 3
    shards = [shard_indices(N, 0, 7, True, r, world_size, True, bs) for r in range(world_size)]
    per_rank = N // (world_size * bs) * bs
    assert all(len(s) == per_rank for s in shards)
    joined = np.concatenate(shards)
    assert len(set(joined.tolist())) == len(joined)  # disjoint


def test_shard_permutation_depends_on_seed_and_epoch():
    def perm(epoch: int, seed: int) -> list[int]:
        return shard_indices(N, epoch, seed, True, 0, 1, False, 4).tolist()

    assert perm(0, 0) == perm(0, 0)
    assert perm(0, 0) != perm(1, 0) and perm(0, 0) != perm(0, 1)
    assert shard_indices(N, 3, 0, False, 0, 1, False, 4).tolist() == list(range(N))
    with pytest.raises(ValueError, match="rank"):
        shard_indices(N, 0, 0, True, 2, 2, False, 4)


def test_loader_epochs_deterministic_and_shuffled():
    loader = _loader()
    first = _ids(loader)
    assert _ids(loader) == first  # no set_epoch: same order
    assert sorted(sum(first, [])) == list(range(N))
    loader.set_epoch(1)
    second = _ids(loader)
    assert second != first and sorted(sum(second, [])) == list(range(N))
    assert _ids(_loader(seed=0)) == first and _ids(_loader(seed=1)) != first
    assert sum(_ids(_loader(shuffle=False)), []) == list(range(N))


def test_drop_last_and_batch_size_changes():
    keep = _loader(drop_last=False)
    assert len(keep) == 5 and keep.n_items == N
    assert [len(b) for b in _ids(keep)] == [5, 5, 5, 5, 3]
    drop = _loader(drop_last=True)
    assert len(drop) == 4 and drop.n_items == 20
    assert [len(b) for b in _ids(drop)] == [5] * 4
    drop.set_batch_size(8)
    assert len(drop) == 2 and [len(b) for b in _ids(drop)] == [8, 8]
    with pytest.raises(ValueError, match="batch_size"):
        drop.set_batch_size(0)


@pytest.mark.parametrize("world_size", [2, 3])
def test_loaders_per_rank_cover_everything(world_size):
    loaders = [_loader(rank=r, world_size=world_size, batch_size=4) for r in range(world_size)]
    seen = [i for loader in loaders for batch in _ids(loader) for i in batch]
    assert sorted(seen) == list(range(N))
    assert sum(loader.n_items for loader in loaders) == N
    assert all(len(loader) == len(_ids(loader)) for loader in loaders)


def test_batches_are_channels_last_and_transform_applies():
    loader = _loader()
    pictures, _ = next(iter(loader))
    x = pictures.pixels
    assert x.dtype == torch.uint8 and x.shape == (5, 3, P, P) and pictures.sizes.tolist() == [[P, P]] * 5
    assert x.is_contiguous(memory_format=torch.channels_last)
    loader.transform = lambda p: p.pixels.float() / 255
    x, _ = next(iter(loader))
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0


def prefetch_threads() -> int:
    # Only the loader's own threads: other tests' threads (an HTTP server, tqdm's monitor) end
    # whenever the scheduler lets them, so the process-wide count depends on machine load.
    return sum(t.name == "vivace-prefetch" for t in threading.enumerate())


def test_prefetch_thread_stops_on_early_break():
    before = prefetch_threads()
    loader = _loader(batch_size=1, prefetch=1)  # producer stays blocked on a full queue
    for _ in loader:
        break
    assert prefetch_threads() == before
    it = iter(loader)
    next(it)
    assert prefetch_threads() == before + 1
    it.close()
    assert prefetch_threads() == before


class _FailingCache:
    """Stands in for ImageCache; its second gather fails like a bad disk read would."""

    def __init__(self) -> None:
        self.inner = _cache()
        self.calls = 0

    def __len__(self) -> int:
        return len(self.inner)

    def gather(self, indices: np.ndarray, pin_memory: bool = False) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise OSError("boom: read failed")
        return self.inner.gather(indices, pin_memory)


def test_worker_exception_reaches_consumer():
    before = prefetch_threads()
    loader = _loader(cache=_FailingCache())
    with pytest.raises(OSError, match="boom"):
        _ids(loader)
    assert prefetch_threads() == before


def test_transform_exception_stops_thread():
    before = prefetch_threads()

    def bad(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("bad transform")

    with pytest.raises(RuntimeError, match="bad transform"):
        _ids(_loader(transform=bad))
    assert prefetch_threads() == before


def test_bad_arguments():
    cache = _cache()
    with pytest.raises(ValueError, match="for the same N"):
        BatchLoader(cache, np.arange(3), np.arange(4), 2, shuffle=False, drop_last=False)
    with pytest.raises(ValueError, match="indices must lie"):
        BatchLoader(cache, np.array([0, N]), np.zeros(2), 2, shuffle=False, drop_last=False)
    with pytest.raises(ValueError, match="rank"):
        _loader(rank=1, world_size=1)
    with pytest.raises(ValueError, match="prefetch"):
        _loader(prefetch=0)


def test_loader_over_built_cache(tmp_path):
    files = []
    for i in range(6):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (12 + i, 9), (40 * i, 0, 0)).save(files[-1])
    cache = build_cache(files, 8, cache_dir=tmp_path / "c", workers=1, progress=False)
    subset = np.array([5, 1, 3])  # a split: positions into the cache
    loader = BatchLoader(cache, subset, np.array([2, 0, 1]), 2, shuffle=False, drop_last=False)
    (x1, y1), (x2, y2) = list(loader)
    assert x1.pixels[:, 0, 4, 4].tolist() == [200, 40] and y1.tolist() == [2, 0]
    assert x2.pixels[:, 0, 4, 4].tolist() == [120] and y2.tolist() == [1]
    assert x1.sizes.tolist() == [[8, 15], [8, 12]]  # (12 + i) x 9, shorter side to 8: kept whole


@pytest.mark.parametrize("crop, valid_view, valid_crop, view", [
    ("random_resized", "auto", 0.0, (fastai_valid_crop(16), False)),  # fastai's RandomResizedCrop view
    ("square", "auto", 0.0, (1.0, True)),                              # fastai's Resize view: the centre square
    ("square", "auto", 0.9, (0.9, True)),
    ("random_resized", "square", 0.875, (0.875, True)),                # chosen, whatever the training crop
    ("square", "squash", 0.0, (fastai_valid_crop(16), False)),
])
def test_the_training_crop_decides_the_validation_view_unless_told(tiny_folder, crop, valid_view, valid_crop, view):
    dls = make_dataloaders(tiny_folder, size_px=16, presize_px=24, batch_size=4, valid_batch_size=8, seed=0, device="cpu", workers=1,
                           progress=False, valid_crop=valid_crop, augment=dict(train_crop=crop), valid_view=valid_view)
    resize = dls.valid.transform.resize
    assert (resize.crop, resize.square) == view
    assert dls.train.transform.resize.crop == crop
