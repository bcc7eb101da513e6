"""Data-parallel throughput on this machine: 1 process vs N processes under torchrun.

    python -m bench distributed --data PATH [--nproc 2] [--arch xresnet18] [--batches 8]

Same global batch (64) and model; the 1-process run uses every core, each of the N processes
gets cores/N threads. Prints images/s in total and per process, and the speedup.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import add_data_arg, bench_command, bench_env, data_folder, machine, make_parser

WARMUP = 2


def worker(args: argparse.Namespace) -> None:
    """Runs inside each process: a short fit, batch times written by rank 0."""
    from vivace import distributed
    from vivace.callbacks import Callback
    from vivace.guards import StopAfter
    from vivace.recipe import make_recipe
    from vivace.build import build_dataloaders, build_learner

    class Clock(Callback):
        def __init__(self):
            self.times = []

        def after_batch(self, learn):
            self.times.append(time.perf_counter())

    world = distributed.init_distributed()
    recipe = make_recipe(data=str(args.data), arch=args.arch, size_px=128, presize_px=160, batch_size=args.bs,
                         epochs=1)
    import torch
    torch.set_num_threads(args.threads)
    dls = build_dataloaders(recipe, world)
    clock = Clock()
    learn = build_learner(recipe, dls, Path(tempfile.mkdtemp()), extra_cbs=[clock, StopAfter(args.batches + WARMUP + 1)])
    learn.recorder.print_table = False
    learn.fit_one_cycle(1, 1e-3)
    if world.is_main:
        rate = args.bs * args.batches / (clock.times[-1] - clock.times[WARMUP])
        Path(args.result).write_text(json.dumps({"images_per_s": rate}))
    distributed.cleanup()


def launch(nproc: int, args: argparse.Namespace) -> float:
    result = Path(tempfile.mkdtemp()) / "result.json"
    threads = max((os.cpu_count() or 1) // nproc, 1)
    worker_argv = ["--worker", "--data", str(args.data), "--arch", args.arch, "--bs", str(args.bs),
                   "--batches", str(args.batches), "--threads", str(threads), "--result", str(result)]
    cmd = bench_command("distributed", worker_argv)  # python -m bench distributed --worker ...
    if nproc > 1:  # torchrun's -m runs the module `bench` in each process, with the same arguments
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *cmd[1:]]
    subprocess.run(cmd, check=True, env=bench_env({"OMP_NUM_THREADS": str(threads)}))
    return json.loads(result.read_text())["images_per_s"]


def main(argv: list[str]) -> None:
    parser = make_parser("distributed", __doc__)
    add_data_arg(parser)
    parser.add_argument("--arch", default="xresnet18")
    parser.add_argument("--bs", type=int, default=64, help="global batch")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--result", default="")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data = data_folder(parser.prog, args.data)
    if args.worker:
        return worker(args)
    print(machine())
    one = launch(1, args)
    many = launch(args.nproc, args)
    print(f"{args.arch}, 128 px, global batch {args.bs}:")
    print(f"  1 process : {one:6.1f} img/s")
    print(f"  {args.nproc} processes: {many:6.1f} img/s in total, {many / args.nproc:6.1f} per process "
          f"({many / one:.2f}x the single process)")


if __name__ == "__main__":
    main(sys.argv[1:])
