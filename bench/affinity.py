"""The thread-affinity lever: end-to-end training images/s under OpenMP placement settings.

    python -m bench affinity --data PATH [--arch xresnet50] [--rounds 2] [--batches 8]

PyTorch's CPU kernels run on OpenMP (libgomp), which reads its placement and waiting policy from
the environment at startup, so each setting is measured in a fresh process, interleaved (see
`common.interleaved_children`). Every child applies `vivace train`'s process settings and times
vivace's Learner loop on the Imagenette cache with augmentation (`python -m bench throughput`'s end to end):
the loader thread shares the two cores with the OpenMP threads, which is where placement could
matter.

- default: no OpenMP variables (the OS scheduler places the threads).
- bind: `OMP_PROC_BIND=close OMP_PLACES=cores`, one OpenMP thread pinned per core.
- passive: `OMP_WAIT_POLICY=PASSIVE`, idle OpenMP threads sleep instead of spinning (leaving the
  core to the loader thread between kernels).
- active: `OMP_WAIT_POLICY=ACTIVE`, idle OpenMP threads spin (the fastest hand-off between kernels).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from .common import add_data_arg, data_folder, interleaved_children, machine, make_parser, side_dataloaders

SETTINGS = {
    "default": {},
    "bind": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
}


def child(args) -> None:
    """One end-to-end measurement in this process; prints a JSON line."""
    from .throughput import end_to_end

    dls = side_dataloaders("vivace", args.data, size=128, bs=64, presize=160, min_scale=0.35)  # as `vivace train`
    print(json.dumps({"train": end_to_end(args.arch, dls, args.batches)}))


def main(argv: list[str]) -> int:
    p = make_parser("affinity", __doc__)
    add_data_arg(p)
    p.add_argument("--arch", default="xresnet50")
    p.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", choices=tuple(SETTINGS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.data = data_folder(p.prog, args.data)
    if args.child:
        child(args)
        return 0
    print(f"{machine()}; {args.arch}, 128 px, batch 64, end to end, {args.batches} timed batches")
    argv = ["--data", str(args.data), "--arch", args.arch, "--batches", str(args.batches)]
    results = interleaved_children("affinity", argv, tuple(SETTINGS), args.rounds, envs=SETTINGS)
    base = statistics.mean(r["train"] for r in results["default"])
    for name, runs in results.items():
        rate = statistics.mean(r["train"] for r in runs)
        env = " ".join(f"{k}={v}" for k, v in SETTINGS[name].items()) or "(none)"
        print(f"{name:<8} {rate:6.1f} img/s  {rate / base:5.2f}x default   {env}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
