"""vivace vs timm 1.0.31's training loop, side by side on one machine: training images/s (issue #8).

    bash scripts/peers_setup.sh    # once: .venv-peers with torch 2.14.1, fastai, timm and vivace
    .venv-peers/bin/python -m bench peer_timm --data PATH [--arch xresnet50] [--batches 10] [--record]

Both sides run the same torch build, batch size and crop size on the Imagenette train split,
channels_last, cross-entropy, Nesterov SGD with decay off BatchNorm and biases:

- timm, as its train.py does it: `create_model('resnet50d', num_classes=10)` (resnet18d for
  xresnet18: the same layers and parameter count as vivace's xresnet), `create_dataset` over the
  train folder, `create_loader(is_training=True)` (its `create_transform`: RandomResizedCrop with
  scale (0.35, 1) like vivace, flip, timm's default colour jitter 0.4; PIL in 2 worker processes,
  then timm's prefetcher normalizes in the main process), `create_optimizer_v2(model, 'sgd')`,
  and the plain loop: forward, loss, zero_grad, backward, step. In fp32 (`timm`: its train.py's
  default) and with forward and loss under bf16 autocast (`timm-bf16`: `--amp --amp-dtype
  bfloat16`, which timm applies on a CPU too).
- vivace: `make_dataloaders(size, presize_px=160, augment=dict(min_scale=0.35))` (crop, flip,
  rotate/zoom/warp, lighting from the uint8 presize cache) and its Learner's `fit_one_cycle`.

Images/s are timed over `--batches` batches after WARMUP untimed ones, so they leave out warm-up
and data-loader startup but include decoding or cache reads, augmentation, forward, backward and
the optimizer step. vivace's presize cache is built (once, on first use) before any clock starts;
its build time is printed. Each side runs in a fresh process, `--rounds` times, interleaved (timm,
timm-bf16, vivace, vivace-fp32, then in reverse, ...): timm under glibc's allocator defaults,
vivace with the process settings `vivace train` applies (reuse of freed memory) in fp32
(`vivace-fp32`, amp off) and as `vivace train` runs (`vivace`: amp auto, bf16 autocast on CPUs
with AMX). `--record` writes timm_ratio_train (vivace / timm, each library's default: the ratio of
means) and timm_ratio_train_bf16 (vivace / timm-bf16), xresnet50 only, into docs/benchmarks.json,
each with a note of the precisions and the ratio at equal precision; `--min-ratio` makes the
first a check.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")  # timm still imports jit helpers

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from timm.data import create_dataset, create_loader  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402

import vivace  # noqa: E402
from vivace.data import make_dataloaders  # noqa: E402
from vivace.learner import Learner  # noqa: E402
from vivace.models import create_model  # noqa: E402
from vivace.runtime import autocast_dtype  # noqa: E402

from .common import (VIVACE_AMP, Stopwatch, VivaceClock, add_data_arg, check_no_workers,  # noqa: E402
                     data_folder, interleaved_children, machine, make_parser, record, side_dataloaders)

WARMUP = 3  # untimed batches: worker startup, allocator and thread pools warming up
PRESIZE = 160  # px: vivace's presize cache (timm reads the JPEGs themselves)
MIN_SCALE = 0.35  # the chapter's aug_transforms(min_scale=0.35) = timm's RandomResizedCrop scale floor
LR = 1e-3  # irrelevant to speed
WEIGHT_DECAY = 5e-5  # vivace's default, given to timm's optimizer too
TIMM_ARCH = {"xresnet50": "resnet50d", "xresnet18": "resnet18d"}  # the same network in each library
RECORDED_ARCH = "xresnet50"  # the architecture timm_ratio_train stands for


def versions() -> str:
    return (f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
            f"vivace {vivace.__version__}, pillow {PIL.__version__}, numpy {np.__version__}")


def timm_loader(data: Path, bs: int, size: int, device: torch.device):
    """timm's train pipeline over data/train: PIL decode + augment in 2 workers, normalize after."""
    dataset = create_dataset("", root=str(data), split="train", is_training=True)
    # persistent_workers off: its workers must not outlive this measurement and steal the CPU.
    return create_loader(dataset, input_size=(3, size, size), batch_size=bs, is_training=True,
                         scale=(MIN_SCALE, 1.0), num_workers=2, device=device, use_prefetcher=True,
                         persistent_workers=False)


def timm_train(loader, arch: str, batches: int, device: torch.device, n_out: int,
               amp_dtype: torch.dtype | None) -> float:
    """timm's train_one_epoch, reduced to the work of one step (forward and loss under autocast)."""
    torch.manual_seed(0)
    model = timm.create_model(TIMM_ARCH[arch], num_classes=n_out).to(device, memory_format=torch.channels_last)
    model.train()
    optimizer = create_optimizer_v2(model, "sgd", lr=LR, weight_decay=WEIGHT_DECAY, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    watch = Stopwatch(WARMUP, batches, device)
    for x, y in loader:  # x (B, 3, S, S) float, normalized by timm's prefetcher
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if watch.tick():
            break  # closes the loader's iterator, which shuts its workers down
    return watch.images_per_s(x.shape[0])


def vivace_train(dls, arch: str, batches: int, amp: str) -> float:
    torch.manual_seed(0)
    watch = Stopwatch(WARMUP, batches, dls.device)
    learn = Learner(dls, create_model(arch, n_out=dls.c), cbs=[VivaceClock(watch)], opt_func="sgd",
                    wd=WEIGHT_DECAY, amp=amp)
    learn.recorder.print_table = False
    learn.fit_one_cycle(1, LR)
    return watch.images_per_s(dls.train.batch_size)


# timm in fp32 and bf16 (its `--amp` autocast dtype); vivace with `vivace train`'s process settings,
# in fp32 and under its default amp (common.VIVACE_AMP). Each in its own process.
TIMM_AMP = {"timm": None, "timm-bf16": torch.bfloat16}
SIDES = (*TIMM_AMP, *VIVACE_AMP)


def child(side: str, args) -> None:
    """One side's training images/s, printed as a JSON line."""
    dls = side_dataloaders(side, args.data, args.size, args.bs, PRESIZE, MIN_SCALE)
    if side in TIMM_AMP:
        rate = timm_train(timm_loader(args.data, args.bs, args.size, dls.device), args.arch, args.batches,
                          dls.device, dls.c, TIMM_AMP[side])
        check_no_workers("timm training")
    else:
        rate = vivace_train(dls, args.arch, args.batches, VIVACE_AMP[side])
    print(json.dumps({"train": rate}))


def main(argv: list[str]) -> int:
    parser = make_parser("peer_timm", __doc__)
    add_data_arg(parser)
    parser.add_argument("--arch", default="xresnet50", choices=sorted(TIMM_ARCH), help="vivace model")
    parser.add_argument("--batches", type=int, default=10, help="timed training batches per library")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--size", type=int, default=128, help="training crop, px")
    parser.add_argument("--record", action="store_true", help="write the ratio into docs/benchmarks.json")
    parser.add_argument("--min-ratio", type=float, default=None, help="exit 1 if vivace/timm is below")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each side, interleaved")
    parser.add_argument("--child", choices=SIDES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data = data_folder(parser.prog, args.data)
    if args.child:
        child(args.child, args)
        return 0
    if not (args.data / "train").is_dir():
        parser.error(f"--data {args.data} needs a train/ folder")
    if args.batches < 1 or args.bs < 1 or args.size % 32 or args.rounds < 1:
        parser.error("need --batches >= 1, --bs >= 1, --size a multiple of 32 and --rounds >= 1")
    if args.record and args.arch != RECORDED_ARCH:
        parser.error(f"--record stores the {RECORDED_ARCH} figure: drop --arch or --record")

    print(machine())
    print(versions())
    start = time.perf_counter()  # cache build (first use only) + loaders: startup, never timed below
    dls = make_dataloaders(args.data, size_px=args.size, presize_px=PRESIZE, batch_size=args.bs,
                           augment=dict(min_scale=MIN_SCALE), progress=False)
    print(f"vivace data setup {time.perf_counter() - start:.1f} s (builds the presize cache on first use)")
    print(f"{len(dls.train.indices)} training images; {args.batches} timed batches after {WARMUP} warm-up; "
          f"bs {args.bs}, {args.size} px, device {dls.device}; "
          f"{args.rounds} rounds of {', '.join(SIDES)}, each in a fresh process")
    results = interleaved_children("peer_timm", argv, SIDES, args.rounds)
    mean = {side: statistics.mean(r["train"] for r in rs) for side, rs in results.items()}
    for ours, peer in (("vivace-fp32", "timm"), ("vivace", "timm"), ("vivace", "timm-bf16")):
        print(f"train {args.arch} vs {TIMM_ARCH[args.arch]}: {peer:<9} {mean[peer]:7.1f} img/s   "
              f"{ours:<11} {mean[ours]:7.1f} img/s   ratio {mean[ours] / mean[peer]:5.2f}x")
    ratio = mean["vivace"] / mean["timm"]

    if args.record:
        ours = "bf16" if autocast_dtype(dls.device, VIVACE_AMP["vivace"]) == torch.bfloat16 else "fp32"
        note = (f"vivace in {ours} (as vivace train runs here) / timm in fp32 (its train.py's default); "
                f"at equal precision (fp32) {mean['vivace-fp32'] / mean['timm']:.2f}x")
        record(precision=f"vivace {ours} / timm fp32", notes={"timm_ratio_train": note}, timm_ratio_train=round(ratio, 3))
        record(precision=f"vivace {ours} / timm bf16", timm_ratio_train_bf16=round(mean["vivace"] / mean["timm-bf16"], 3))
        print("recorded timm_ratio_train, timm_ratio_train_bf16 in docs/benchmarks.json")
    if args.min_ratio is not None and ratio < args.min_ratio:
        print(f"FAIL: vivace/timm {ratio:.2f} is below --min-ratio {args.min_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
