"""Benchmark scripts at toy sizes: they must measure, and record nothing unless asked.

The GPU check, run where there is no GPU: 60 timed batches of 8 need more than the embedded
dataset's 400 training images, so its list repeats.
"""
from __future__ import annotations

import json
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


def test_train_bench_compares_precisions_without_recording():
    before = RESULTS.read_bytes()
    embedded = REPO / "vivace" / "data" / "embedded"
    out = subprocess.run([sys.executable, "bench/train.py", "--data", str(embedded), "--archs", "xresnet18",
                          "--bs", "4", "--size", "32", "--batches", "1", "--compare-amp"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"fp32 matmul peak: [\d.]+ GFLOP/s", out.stdout), out.stdout
    ratio = re.search(r"ceiling fp32 [\d., ]+ img/s, bf16 autocast [\d., ]+ img/s: bf16 autocast is ([\d.]+)x", out.stdout)
    assert ratio is not None and float(ratio[1]) > 0, out.stdout
    assert RESULTS.read_bytes() == before  # xresnet50 figures only


def test_record_notes_the_machine_and_date_of_each_figure(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import common
    finally:
        sys.path.remove(str(REPO / "bench"))
    results = tmp_path / "benchmarks.json"
    results.write_text('{"old_figure": 1.0}\n')
    common.record(path=results, new_figure=2.0)
    data = json.loads(results.read_text())
    assert data["old_figure"] == 1.0 and data["new_figure"] == 2.0
    assert data["machine"] == common.cpu_name()
    assert data["measured_on"] == {"new_figure": f"{data['machine']}, {data['date']}"}
    common.record(stamp=False, path=results, gpu={"device": "elsewhere"})
    assert "gpu" not in json.loads(results.read_text())["measured_on"]  # it carries its own
