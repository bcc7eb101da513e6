"""Shared by the benchmark scripts: machine facts, the matmul peak, and docs/benchmarks.json."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "imagenette2-224"
RESULTS = REPO / "docs" / "benchmarks.json"


def machine() -> str:
    """One line naming the CPU, cores and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """Best fp32 matmul GFLOP/s over a few square (n x n) products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def record(**values) -> None:
    """Merge values into docs/benchmarks.json (written by the scripts, never by hand)."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data.update(values)
    data["machine"] = machine()
    data["date"] = time.strftime("%Y-%m-%d")
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
