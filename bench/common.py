"""Shared by the benchmarks: options, machine facts, the matmul peak, and docs/benchmarks.json."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from vivace.callbacks import Callback
from vivace.data import DataLoaders, make_dataloaders
from vivace.runtime import configure_process, cpu_model

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "benchmarks.json"
DATA_ENV = "VIVACE_BENCH_DATA"  # the data folder when --data is not given


def make_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser, named as it is run (`python -m bench NAME`), described by its docstring."""
    return argparse.ArgumentParser(prog=f"python -m bench {name}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    """`--data PATH`, defaulting to $VIVACE_BENCH_DATA; `data_folder` checks that one was given."""
    parser.add_argument("--data", type=Path, default=os.environ.get(DATA_ENV) or None,
                        help=f"an ImageNet-style folder with train/ and val/ (default: ${DATA_ENV}); "
                             "every figure so far is on imagenette2-224, Imagenette's 224 px squares")


def data_folder(prog: str, data: Path | None) -> Path:
    """The data folder from --data or the environment, or exit with one line saying how to give one."""
    if data is None:
        raise SystemExit(f"{prog}: error: no data folder: pass --data PATH or set {DATA_ENV} "
                         f"(in this team's checkout: --data ../shared/data/imagenette2-224)")
    return Path(data)


def bench_command(name: str, argv: list[str]) -> list[str]:
    """The command line that runs benchmark `name` in a fresh Python (children, workers)."""
    return [sys.executable, "-m", "bench", name, *argv]


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH, so a child finds `bench` from any cwd."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, **(extra or {}), "PYTHONPATH": os.pathsep.join(paths)}


def cpu_name() -> str:
    """The CPU model and core count."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def machine() -> str:
    """One line naming the CPU, cores and library versions."""
    return f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def matmul_peak_gflops(sizes: tuple[int, ...] = (2048, 4096), reps: int = 5,
                       dtype: torch.dtype = torch.float32) -> float:
    """Best matmul GFLOP/s in `dtype` (CPU) over a few square (n x n) products of each size."""
    best = 0.0
    for n in sizes:  # 2048 alone measured below what xresnet50's convolutions reach here
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def record(stamp: bool = True, path: Path = RESULTS, precision: str | None = None,
           notes: dict[str, str] | None = None, **values) -> None:
    """Merge values into docs/benchmarks.json (written by the benchmarks, never by hand).

    `stamp` sets the file's machine and date to this one's and notes them per figure under
    `measured_on`, with the `precision` it was measured in (fp32, bf16, or a ratio's two), because
    the figures come from different machines, days and precisions; a figure from another machine
    (the GPU check) carries its own inside its value instead. `notes` say, per figure, what a
    reader must know to read it (what a ratio compares); a figure recorded again drops its old note.
    """
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    if stamp:
        data["machine"] = cpu_name()
        data["date"] = time.strftime("%Y-%m-%d")
        where = {"machine": data["machine"], "date": data["date"]}
        where.update({"precision": precision} if precision else {})
        data.setdefault("measured_on", {}).update({key: where for key in values})
    old_notes = {k: v for k, v in data.get("notes", {}).items() if k not in values}
    if old_notes or notes:
        data["notes"] = {**old_notes, **(notes or {})}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class Stopwatch:
    """Counts training batches; clocks the `timed` ones after `warmup` (syncing a GPU at both ends)."""

    def __init__(self, warmup: int, timed: int, device: torch.device):
        self.warmup, self.timed, self.device = warmup, timed, device
        self.seen, self.start, self.end = 0, 0.0, 0.0

    def tick(self) -> bool:
        """Call after each training step; True once the last timed batch is done."""
        self.seen += 1
        if self.seen in (self.warmup, self.warmup + self.timed):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # only at the two clock reads
            now = time.perf_counter()
            if self.seen == self.warmup:
                self.start = now
            else:
                self.end = now
        return self.seen >= self.warmup + self.timed

    def images_per_s(self, bs: int) -> float:
        if self.end <= self.start:
            raise RuntimeError(f"stopwatch saw {self.seen} batches, needs {self.warmup + self.timed}: "
                               f"is the training set smaller than that many batches?")
        return bs * self.timed / (self.end - self.start)


class VivaceClock(Callback):
    """vivace side: tick after each batch; ask the loop to stop after the last timed one."""

    def __init__(self, watch: Stopwatch):
        self.watch = watch

    def after_batch(self, learn) -> None:
        if self.watch.tick():
            learn.request_stop()


def check_no_workers(after: str) -> None:
    """A peer's loader processes still running would steal the CPU from the next measurement."""
    alive = multiprocessing.active_children()
    if alive:
        raise RuntimeError(f"{len(alive)} data-loader processes still alive after {after}: {alive}")


def interleaved_children(name: str, argv: list[str], sides: tuple[str, ...], rounds: int,
                         envs: dict[str, dict[str, str]] | None = None) -> dict[str, list[dict]]:
    """Measure each side in a fresh `python -m bench NAME *argv --child SIDE` (its last stdout line is JSON).

    Order: sides, reversed, sides, ... so that drift over the run hits every side alike; and
    process-wide settings (mallopt, thread pools, a warm heap) never carry from one side to the next.
    `envs` adds environment variables to a side's process (read at startup, e.g. by OpenMP).
    """
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(rounds):
        for side in sides if i % 2 == 0 else sides[::-1]:
            out = subprocess.run(bench_command(name, [*argv, "--child", side]), capture_output=True, text=True,
                                 env=bench_env((envs or {}).get(side)))
            if out.returncode != 0:
                raise SystemExit(f"the {side} measurement failed:\n{out.stderr[-4000:]}")
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  round {i + 1}, {side}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in results[side][-1].items()))
    return results


# The vivace sides of the peer benchmarks and their `amp`: as `vivace train` runs (bf16 autocast on
# CPUs with AMX, vivace.runtime.autocast_dtype), and in fp32 like the peers' defaults.
VIVACE_AMP = {"vivace": "auto", "vivace-fp32": "off"}


def side_dataloaders(side: str, data: Path, size: int, bs: int, presize: int, min_scale: float) -> DataLoaders:
    """A peer benchmark's child starts here: `vivace train`'s process settings on the vivace sides
    only, then vivace's loaders (every side uses them: image counts, the device, TTA's files)."""
    if side in VIVACE_AMP:
        configure_process(threads=0, reuse_memory=True)
    return make_dataloaders(data, size_px=size, presize_px=presize, batch_size=bs, augment=dict(min_scale=min_scale), progress=False)
