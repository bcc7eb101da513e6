"""The GPU check script, run where there is no GPU: it must measure, and record nothing.

60 timed batches of 8 need more than the embedded dataset's 400 training images: its list repeats.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "benchmarks.json"


def test_gpu_check_measures_on_the_cpu_without_recording():
    before = RESULTS.read_bytes()
    out = subprocess.run([sys.executable, "bench/gpu.py", "--arch", "xresnet18", "--bs", "8", "--size", "32",
                          "--batches", "60"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no CUDA" in out.stdout
    rates = re.search(r"model step ([\d.]+) img/s, end to end ([\d.]+) img/s", out.stdout)
    assert rates is not None, out.stdout
    assert float(rates[1]) > 0 and float(rates[2]) > 0
    assert RESULTS.read_bytes() == before
