import os
"""Tests for vivace.runtime: thread count and the allocator setting (process-wide: in a child)."""
import platform
import subprocess
import sys

import pytest
import torch

from vivace import runtime
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


@pytest.mark.slow
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


@pytest.mark.parametrize("fast_bf16, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_amp_on_cpu_is_bf16_only_with_amx(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast_bf16)
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype(cpu, "auto") is expected
    assert runtime.autocast_dtype(cpu, "bf16") is torch.bfloat16  # asked for: always
    assert runtime.autocast_dtype(cpu, "fp16") is None  # fp16 autocast (and its scaler) is CUDA-only
    assert runtime.autocast_dtype(cpu, "off") is None


def test_cpu_has_fast_bf16_follows_torchs_amx_check(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert runtime.cpu_has_fast_bf16() is False
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the check: fp32
    assert runtime.cpu_has_fast_bf16() is False


def test_autocast_context_is_a_no_op_for_fp32():
    x = torch.ones(2, 2)
    with runtime.autocast(torch.device("cpu"), None):
        assert (x @ x).dtype == torch.float32
    with runtime.autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16


def test_compile_modes_map_onto_torch_compile(monkeypatch, tiny_dls):
    from vivace.learner import Learner
    from vivace.models import create_model
    from vivace.runtime import compile_mode

    assert compile_mode("default") is None
    assert compile_mode("reduce-overhead") == "reduce-overhead"
    with pytest.raises(ValueError, match="compile_mode='graphs' is not one of: default, reduce-overhead"):
        compile_mode("graphs")
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    model = create_model("xresnet18", n_out=3, widen=0.25)
    Learner(tiny_dls, model, compile=True, compile_mode="reduce-overhead")
    Learner(tiny_dls, model, compile=True)
    Learner(tiny_dls, model)
    assert seen == ["reduce-overhead", None]


def test_recipe_compile_mode_is_checked():
    from vivace.recipe import make_recipe

    assert make_recipe(compile=True, compile_mode="max-autotune").compile_mode == "max-autotune"
    with pytest.raises(ValueError, match="compile_mode"):
        make_recipe(compile_mode="fast")


def test_threads_0_respects_the_users_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        set_threads(0)
        assert torch.get_num_threads() == 1
        set_threads(2)  # --threads wins
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "abc")  # not a count: OpenMP ignores it, so do we
        set_threads(0)
        assert torch.get_num_threads() == max(1, os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)
