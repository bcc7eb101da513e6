"""The allocator lever: images/s with glibc's defaults vs `reuse_freed_memory`, side by side.

    python -m bench allocator [--archs xresnet18 xresnet50] [--rounds 2] [--batches 6]
    python -m bench allocator --step eval    # evaluation: forward passes, batch 128
    python -m bench allocator --opt adamw    # the training step with AdamW instead of SGD

mallopt settings are process-wide and cannot be undone, so each measurement is a fresh child
process: default, reuse, default, reuse... (interleaved, so drift hits both alike). Each child
times the model-only training step of `python -m bench throughput` (or the evaluation forward pass) and
reports its page faults and its user/kernel CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

from vivace.runtime import reuse_freed_memory

from .common import bench_command, bench_env, machine, make_parser, record
from .throughput import ceiling, eval_ceiling

N_OUT = 10


def child(arch: str, reuse: bool, batches: int, step: str, opt: str) -> None:
    """One measurement in this process; prints a JSON line."""
    applied = reuse_freed_memory() if reuse else False
    if step == "train":
        rate = ceiling(arch, 64, 128, N_OUT, batches, opt_name=opt)
    else:
        rate = eval_ceiling(arch, 128, 128, N_OUT, batches)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"rate": rate, "applied": applied, "minflt": usage.ru_minflt,
                      "user_s": usage.ru_utime, "sys_s": usage.ru_stime}))


def measure(arch: str, reuse: bool, batches: int, step: str, opt: str) -> dict:
    argv = ["--child", arch, "--batches", str(batches), "--step", step, "--opt", opt] + (["--reuse"] if reuse else [])
    out = subprocess.run(bench_command("allocator", argv), check=True, capture_output=True, text=True,
                         env=bench_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    p = make_parser("allocator", __doc__)
    p.add_argument("--archs", nargs="+", default=["xresnet18", "xresnet50"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batches", type=int, default=6, help="timed batches per measurement")
    p.add_argument("--step", choices=("train", "eval"), default="train",
                   help="train: a training step at batch 64; eval: a forward pass at batch 128")
    p.add_argument("--opt", choices=("sgd", "adamw", "ranger"), default="sgd", help="the training step's optimizer")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--reuse", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--record", action="store_true", help="write the ratio to docs/benchmarks.json")
    args = p.parse_args(argv)
    if args.record and args.opt != "sgd":
        p.error("--record stores the SGD figures: drop --opt or --record")
    if args.child:
        return child(args.child, args.reuse, args.batches, args.step, args.opt)
    print(machine())
    ratios = {}
    for arch in args.archs:
        runs = {False: [], True: []}
        for _ in range(args.rounds):
            for reuse in (False, True):
                r = measure(arch, reuse, args.batches, args.step, args.opt)
                runs[reuse].append(r["rate"])
                print(f"{arch} {'reuse  ' if reuse else 'default'}: {r['rate']:6.1f} img/s, "
                      f"{r['minflt']:>9,} page faults, cpu user {r['user_s']:.1f} s / kernel {r['sys_s']:.1f} s"
                      + ("" if r["applied"] or not reuse else "  (mallopt unavailable: not glibc)"))
        ratios[arch] = statistics.mean(runs[True]) / statistics.mean(runs[False])
        step = f"{args.step} ({args.opt if args.step == 'train' else 'no optimizer'})"
        print(f"{arch} {step}: reuse_freed_memory is {ratios[arch]:.2f}x glibc's default (mean of {args.rounds})")
    if args.record:
        key = "allocator_speedup" if args.step == "train" else "allocator_speedup_eval"
        record(precision="fp32", **{key: {k: round(v, 3) for k, v in ratios.items()}})  # the step is fp32


if __name__ == "__main__":
    main(sys.argv[1:])
