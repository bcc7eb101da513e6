"""The cache resident on the device: copied there once, batches gathered there.

Imagenette at 160 px is ~1-3 GB of uint8, a few per cent of a GPU's memory. Kept there, a batch
is one `index_select` kernel on rows already on the device: no prefetch thread, no pinned host
copy and no host-to-device transfer per batch (the epoch's order is copied once). Where the
cache would take more than FREE_FRACTION of the free device memory (or, asked for with 'on', more
than all of it), the loader prefetches from the memory-mapped cache instead (`BatchLoader`'s
thread), as on a CPU, and says so: the kernel pages a cache bigger than RAM in and out.
"""
from __future__ import annotations

import os
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from ..pictures import Pictures
from .cache import ImageCache

DataOnDevice = Literal["auto", "on", "off"]
DATA_ON_DEVICE = get_args(DataOnDevice)
FREE_FRACTION = 0.5  # auto: the cache may take at most this share of the device's free memory
COPY_ROWS = 256  # images per host-to-device copy while filling (bounds the host buffer)


class DeviceCache:
    """An ImageCache's pixels in device memory, (N, P, W, 3) uint8; sizes stay with the cache (CPU)."""

    def __init__(self, cache: ImageCache, device: torch.device | str):
        self.cache, self.device = cache, torch.device(device)
        self.pixels = copy_to_device(cache.pixels, self.device)

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def presize(self) -> int:
        return self.cache.presize

    def gather(self, indices: np.ndarray, rows: Tensor | None = None) -> Pictures:
        """Rows `indices` as Pictures on the device; `rows`: the same indices already there."""
        idx = np.asarray(indices, dtype=np.int64)
        if rows is None:
            rows = torch.from_numpy(idx).to(self.device)
        x = self.pixels.index_select(0, rows)  # (B, P, W, 3): NHWC memory = NCHW channels_last
        return Pictures(x.permute(0, 3, 1, 2), torch.from_numpy(self.cache.sizes[idx]),
                        torch.from_numpy(self.cache.transposed[idx]))


def copy_to_device(pixels: np.ndarray, device: torch.device) -> Tensor:
    """A (possibly memory-mapped) uint8 array as one device tensor, copied COPY_ROWS at a time."""
    out = torch.empty(pixels.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(pixels), COPY_ROWS):
        chunk = torch.from_numpy(np.array(pixels[start:start + COPY_ROWS]))  # a writable host copy
        out[start:start + len(chunk)].copy_(chunk)
    return out


def choose_data_on_device(mode: str, cache: ImageCache, device: torch.device) -> tuple[bool, str]:
    """Whether batches come from a device-resident copy of the cache, and the line saying which.

    'on' copies wherever the cache fits in the free memory of the device (a CPU's: the cache then
    sits in RAM instead of being memory-mapped), and falls back to the memory map, saying so, where
    it does not (an ImageNet-size cache): a copy that cannot fit would end the run out of memory.
    'off' never copies; 'auto' copies onto a CUDA device when the cache takes at most
    FREE_FRACTION of its free memory. On a CPU, auto says nothing: prefetching from the memory map
    is the path.
    """
    if mode not in DATA_ON_DEVICE:
        raise ValueError(f"data_on_device={mode!r} is not one of: {', '.join(DATA_ON_DEVICE)}")
    size = f"{cache.pixels.nbytes / 1e9:.2f} GB"
    resident = f"data: the cache ({size}) is resident on {device}; batches are gathered there"
    if mode == "auto" and device.type != "cuda":
        return False, ""
    prefetched = f"data: batches are prefetched from the cache ({size}) in host memory"
    if mode == "off":
        return False, prefetched + " (data_on_device off)"
    free = free_memory(device)
    share = 1.0 if mode == "on" else FREE_FRACTION
    if cache.pixels.nbytes <= share * free:
        return True, resident
    where = "its free" if mode == "on" else f"over {FREE_FRACTION:.0%} of the free"
    return False, (f"{prefetched}, memory-mapped: on {device} it would take {where} {free / 1e9:.1f} GB"
                   + (" (data_on_device on falls back)" if mode == "on" else ""))


def free_memory(device: torch.device) -> int:
    """Bytes free on `device`: a CUDA device's free memory, or the host's available RAM, within this
    process's memory cgroup where one limits it (a container's limit, which /proc/meminfo ignores)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = host_available_memory()
    limited = cgroup_free_memory()
    return available if limited is None else min(available, limited)


def host_available_memory() -> int:
    """The kernel's MemAvailable (free plus reclaimable page cache), or the free pages without /proc."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # no /proc (macOS): the free pages, a lower bound
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# cgroup v2 and v1: (the line of /proc/self/cgroup, the hierarchy under /sys/fs/cgroup, limit, usage, the stat
# key of inactive page cache, which the kernel reclaims before it counts as used)
CGROUPS = (("0::", "", "memory.max", "memory.current", "inactive_file"),
           (":memory:", "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def cgroup_free_memory(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process's memory cgroup has left (its limit less its use, less reclaimable page
    cache); None where no cgroup limits memory or none can be read."""
    try:
        with open(proc_cgroup, encoding="ascii") as lines:
            entries = lines.read().splitlines()
    except OSError:
        return None
    for tag, mount, limit_name, usage_name, inactive_key in CGROUPS:
        for entry in entries:
            if tag in entry:
                folder = os.path.join(root, mount, entry.split(tag, 1)[1].lstrip("/"))
                left = _cgroup_left(folder, limit_name, usage_name, inactive_key)
                if left is not None:
                    return left
    return None


def _cgroup_left(folder: str, limit_name: str, usage_name: str, inactive_key: str) -> int | None:
    """One cgroup folder's limit less its working set, or None if unlimited or unreadable."""
    try:
        with open(os.path.join(folder, limit_name), encoding="ascii") as f:
            limit_text = f.read().strip()
        if limit_text == "max" or int(limit_text) >= NO_LIMIT:
            return None
        with open(os.path.join(folder, usage_name), encoding="ascii") as f:
            usage = int(f.read())
        with open(os.path.join(folder, "memory.stat"), encoding="ascii") as f:
            stats = dict(line.split() for line in f if line.strip())
    except (OSError, ValueError):
        return None
    return max(int(limit_text) - (usage - int(stats.get(inactive_key, 0))), 0)
