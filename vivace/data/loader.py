"""Batches from the presize cache: shuffle and shard indices, gather uint8, transform on the device.

Two paths to the same batches. From host memory (a CPU, or a cache too large for the GPU): per
batch, one fancy-index read of the memmap -> (pinned) uint8 `Pictures` (B, 3, P, W canvas,
channels_last) -> non-blocking copy of the pixels to the device, all in a prefetch thread that
runs ahead by `prefetch` batches. From a `DeviceCache` (resident.py): the epoch's order is copied
to the device once and each batch is one gather there, in the consuming thread. Either way the
consumer then applies `transform` (augmentation, normalization) on the device.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..pictures import Pictures
from .cache import ImageCache
from .resident import DeviceCache

PUT_POLL_S = 0.05  # how often a blocked producer checks whether the consumer has gone away
GET_POLL_S = 1.0  # how often a waiting consumer checks that the producer is still alive


def shard_indices(n: int, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int,
                  drop_last: bool, batch_size: int) -> np.ndarray:
    """This rank's positions in 0..n-1 for `epoch`: a seeded permutation, then every world_size-th.

    drop_last=True (training): the permutation is first cut to a multiple of
    world_size * batch_size, so every rank gets the same number of full batches.
    drop_last=False (validation): nothing is cut; the shards of all ranks are disjoint and
    together hold every position exactly once (their lengths may differ by one).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Same (seed, epoch) on every rank -> same permutation -> disjoint shards.
    perm = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
    if drop_last:
        perm = perm[: n // (world_size * batch_size) * world_size * batch_size]
    return perm[rank::world_size]


class _Failure:
    """Carries an exception from the prefetch thread to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()  # end-of-epoch marker on the queue


class BatchLoader:
    """Yields `(x, y)`: x uint8 `Pictures` (or `transform(x)`, a (B, 3, S, S) tensor), y int64 (B,)
    class indices, or float (B, C) multi-hot targets when `labels` is (N, C) (several labels per image)."""

    def __init__(self, cache: ImageCache | DeviceCache, indices: np.ndarray, labels: np.ndarray,
                 batch_size: int, *, shuffle: bool, drop_last: bool, seed: int = 0,
                 device: torch.device | str = "cpu",
                 transform: Callable[[Pictures], Tensor] | None = None, rank: int = 0,
                 world_size: int = 1, prefetch: int = 2) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)  # positions into the cache
        labels = np.asarray(labels)
        self.labels = labels.astype(np.float32 if labels.ndim == 2 else np.int64, copy=False)
        if self.indices.ndim != 1 or self.labels.ndim not in (1, 2) or len(self.indices) != len(self.labels):
            raise ValueError(f"indices must be 1-D and labels (N,) or (N, C) for the same N, got shapes "
                             f"{self.indices.shape} and {self.labels.shape}")
        if len(self.indices) and not 0 <= self.indices.min() <= self.indices.max() < len(cache):
            raise ValueError(f"indices must lie in 0..{len(cache) - 1} (the cache has {len(cache)} "
                             f"images), got {self.indices.min()}..{self.indices.max()}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1 batch, got {prefetch}")
        self.batch_size = 0
        self.set_batch_size(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.device = _resolve_device(device)
        self.transform = transform  # read per batch: a new one acts from the next batch
        self.rank = rank
        self.world_size = world_size
        self.prefetch = prefetch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of the next iteration (same epoch -> same order)."""
        self.epoch = epoch

    def set_batch_size(self, batch_size: int) -> None:
        """Change the batch size, effective from the next iteration."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    @property
    def n_items(self) -> int:
        """Items this rank sees per epoch."""
        n, ws = len(self.indices), self.world_size
        if self.drop_last:
            return n // (ws * self.batch_size) * self.batch_size
        return len(range(self.rank, n, ws))

    def __len__(self) -> int:
        return -(-self.n_items // self.batch_size)  # ceil; exact when drop_last

    @property
    def size(self) -> int:
        """Output side of the transform, px (the Learner's step may ask for another: progressive resizing)."""
        return self.transform.size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def iter_raw(self) -> Iterator[tuple[Pictures, Tensor]]:
        """This epoch's batches as cached, before `transform`: uint8 Pictures (for TTA views)."""
        return self.iter_from(0, raw=True)

    def iter_from(self, start_batch: int, raw: bool = False) -> Iterator[tuple[Tensor | Pictures, Tensor]]:
        """This epoch's batches from `start_batch` on (a resumed run skips what it already did)."""
        order = shard_indices(len(self.indices), self.epoch, self.seed, self.shuffle, self.rank,
                              self.world_size, self.drop_last, self.batch_size)
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches = batches[start_batch:]
        gathered = self._gathered(batches) if isinstance(self.cache, DeviceCache) else self._prefetched(batches)
        try:
            for x, y in gathered:
                if self.transform is not None and not raw:
                    x = self.transform(x)
                yield x, y
        finally:
            gathered.close()  # a consumer that stops early stops the prefetch thread now

    def _gathered(self, batches: list[np.ndarray]) -> Iterator[tuple[Pictures, Tensor]]:
        """Batches gathered on the device from the resident cache: one small copy per epoch, none per batch."""
        positions = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        rows = torch.from_numpy(self.indices[positions]).to(self.device)
        labels = torch.from_numpy(self.labels[positions]).to(self.device)
        start = 0
        for batch in batches:
            end = start + len(batch)
            yield self.cache.gather(self.indices[batch], rows[start:end]), labels[start:end]
            start = end

    def _prefetched(self, batches: list[np.ndarray]) -> Iterator[tuple[Pictures, Tensor]]:
        """Batches read from host memory and copied to the device by a thread running ahead."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(batches, q, stop),
                                  name="vivace-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = _get(q, thread)
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield self._arrived(*item)
        finally:
            # Runs on normal end, on error and when the consumer breaks out (generator close):
            # the producer sees `stop` within PUT_POLL_S and exits, so no thread outlives us.
            stop.set()
            thread.join()

    def _produce(self, batches: list[np.ndarray], q: queue.Queue, stop: threading.Event) -> None:
        """Prefetch thread: gather, pin and copy each batch, then put it on the queue."""
        stream = None
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the current device is per thread
            # A private stream lets the host-to-device copy overlap the consumer's compute.
            stream = torch.cuda.Stream(self.device)
        try:
            for batch in batches:
                if stop.is_set():
                    return
                if not _put(q, self._load(batch, stream), stop):
                    return
        except Exception as exc:  # any failure must reach the consumer, not die with the thread
            _put(q, _Failure(exc), stop)
            return
        _put(q, _DONE, stop)

    def _load(self, batch: np.ndarray, stream: torch.cuda.Stream | None) -> tuple:
        """One batch to the device: (x, y, copy-done event or None)."""
        pin = stream is not None
        x = self.cache.gather(self.indices[batch], pin_memory=pin)  # uint8 Pictures (B, 3, P, W)
        y = torch.from_numpy(self.labels[batch])  # fancy index: a fresh, owned array
        if stream is None:
            return x.to(self.device), y.to(self.device), None
        with torch.cuda.stream(stream):
            x = x.to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        return x, y, done

    def _arrived(self, x: Pictures, y: Tensor,
                 done: torch.cuda.Event | None) -> tuple[Pictures, Tensor]:
        """Make the consumer's stream wait for the copy (GPU-side; no host sync)."""
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            # The tensors were allocated on the copy stream; tell the caching allocator they are
            # used on this one too, so their memory is not reused while kernels still read it.
            x.pixels.record_stream(current)
            y.record_stream(current)
        return x, y

    def __repr__(self) -> str:
        return (f"BatchLoader({self.n_items} items, bs={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, rank {self.rank}/{self.world_size}, {self.device})")


def _resolve_device(device: torch.device | str) -> torch.device:
    """`device` with an explicit index for CUDA, fixed now because threads differ in default."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _get(q: queue.Queue, thread: threading.Thread) -> object:
    """The next item from the prefetch thread; RuntimeError instead of a hang if it died."""
    while True:
        try:
            return q.get(timeout=GET_POLL_S)
        except queue.Empty:
            if not thread.is_alive() and q.empty():
                raise RuntimeError("the batch prefetch thread stopped without a result or an "
                                   "error; this is a bug in vivace, please report it") from None


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item` unless `stop` is set first; True if it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=PUT_POLL_S)
            return True
        except queue.Full:
            continue
    return False
