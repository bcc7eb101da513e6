"""Tests for vivace.runtime: thread count and the allocator setting (process-wide: in a child)."""
import platform
import subprocess
import sys

import pytest
import torch

from vivace.runtime import configure_process, set_threads

CHILD = """
import resource, sys, torch
from vivace.runtime import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
def step():  # 64 MB blocks: glibc would mmap each one and unmap it on free
    for _ in range(20):
        torch.ones(16 << 20).sum()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_set_threads_all_cores_by_default():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(0)
        assert torch.get_num_threads() >= 1
    finally:
        torch.set_num_threads(before)


def test_configure_process_turns_on_cudnn_benchmark_only_with_cuda(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    configure_process(threads, reuse_memory=False)
    assert torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    configure_process(threads, reuse_memory=False)
    assert torch.backends.cudnn.benchmark is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_reuse_freed_memory_stops_refaulting_large_blocks():
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        applied, count = out.stdout.split()
        return applied, int(count)
    # glibc's default: each 64 MB block is mmapped afresh, ~16,000 page faults each (20 blocks).
    applied, count = faults("default")
    assert applied == "None" and count > 200_000
    applied, count = faults("reuse")
    assert applied == "True" and count < 20_000  # the freed block is reused from the heap
