"""Process-wide speed settings a run applies once, before any heavy work: threads and the C allocator."""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from typing import Literal, get_args

import torch

from .environment import env_int

# glibc's mallopt() parameter numbers (<malloc.h>).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
TOP_PAD_BYTES = 256 << 20  # grow the heap in 256 MiB steps: fewer brk() calls
NEVER_TRIM_BYTES = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before giving any back


def set_threads(threads: int) -> None:
    """`threads` intra-op threads; 0: OMP_NUM_THREADS where set (torchrun sets 1 for several
    processes), else the cores shared among this machine's processes."""
    processes = env_int("LOCAL_WORLD_SIZE", 1, low=1)
    torch.set_num_threads(threads if threads > 0 else omp_threads() or max(1, (os.cpu_count() or 1) // processes))


def omp_threads() -> int:
    """OMP_NUM_THREADS as a thread count; 0 when unset or not a count (OpenMP ignores those too)."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # "4,2": nested levels
    return int(value) if value.isdigit() and int(value) > 0 else 0


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it; False where libc isn't glibc.

    Each CPU training step frees and reallocates the same activation buffers, tens of MB each.
    glibc serves blocks that large with fresh mmap()s and unmaps them on free, so every step
    page-faults and zeroes them again (xresnet18: ~13 % of the process's CPU time in the kernel).
    With mmap and trimming off the heap keeps them: training 1.04-1.2x and evaluation 1.7-2.3x
    faster (`python -m bench allocator`, docs/BENCHMARKS.md). The cost: the process holds on to
    its peak memory until it exits.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM_BYTES), (M_TOP_PAD, TOP_PAD_BYTES))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware matrix units (Intel AMX) and the OS enabled them."""
    # torch's own check (cpuinfo flags plus the kernel's permission to use the AMX tiles); a private
    # name, hence the guard: an older or newer torch without it falls back to fp32.
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype for `amp` ('auto', 'bf16', 'fp16', 'off') on `device`; None = fp32.

    'auto' is bf16 on CUDA (fp16 where bf16 is unsupported) and on CPUs with AMX, where oneDNN's
    bf16 convolutions trained xresnet50 2.16x and xresnet18 2.37x faster than fp32 (Xeon, 2 cores,
    docs/BENCHMARKS.md); elsewhere on a CPU fp32, since bf16 without AMX measured 10-100x slower.
    fp16 is CUDA-only (its gradient scaler); on a CPU it means fp32.
    """
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if amp == "bf16" or (amp == "auto" and device.type == "cpu" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for `dtype` on `device`, or a no-op for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


AmpMode = Literal["auto", "bf16", "fp16", "off"]
# torch.compile's modes. reduce-overhead replays each input size's step as a CUDA graph (a
# progressive-resizing run captures one per size): the launch-free step of issue #22, unmeasured
# until a GPU is lent; default mode gave nothing on CPU or on an H200 (docs/BENCHMARKS.md).
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES = get_args(CompileMode)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a CUDA device runs asynchronously), so a timing is true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_mode(compile_mode: str) -> str | None:
    """torch.compile's `mode` for a Learner's `compile_mode` ("default" = None); ValueError if unknown."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={compile_mode!r} is not one of: {', '.join(COMPILE_MODES)}")
    return None if compile_mode == "default" else compile_mode


def configure_process(threads: int, reuse_memory: bool) -> None:
    """The settings a training run applies once at start (Recipe.threads, Recipe.reuse_memory)."""
    set_threads(threads)
    if reuse_memory:
        reuse_freed_memory()
    if torch.cuda.is_available():
        # Input sizes change only between progressive-resizing stages, so cuDNN's per-shape
        # algorithm search runs a few times per run and then picks the fastest kernels (timm and
        # fastai's training scripts do the same). Not measured here: no GPU was lent.
        torch.backends.cudnn.benchmark = True


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
