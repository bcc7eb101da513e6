"""vivace vs fastai 2.8.12, side by side on one machine: training and TTA images/s (issue #8).

    bash scripts/peers_setup.sh    # once: .venv-peers with torch 2.14.1, fastai, timm and vivace
    .venv-peers/bin/python -m bench peer_fastai --data PATH [--arch xresnet50] [--batches 10] [--record]

Both sides run the same torch build, model (xresnet, 10 classes, channels_last), batch size,
crop size and augmentation on the Imagenette train split:

- fastai: the chapter's DataBlock (Resize(160) per item, aug_transforms(size, min_scale=0.35) +
  Normalize per batch), 2 worker processes, `Learner(..., CrossEntropyLossFlat(), accuracy)`,
  `learn.to_channelslast(use_amp=False)` (fastai's default there is fp16 autocast, which on a CPU
  is far slower than fp32), `fit_one_cycle`; a Callback stops the fit with CancelFitException.
- vivace: `make_dataloaders(size, presize_px=160, augment=dict(min_scale=0.35))` and its Learner's
  `fit_one_cycle`; a Callback asks it to stop.

The optimizer is the chapter's (fastai's default Adam; vivace's 'adamw', the same update) unless
`--opt sgd` (fastai's SGD with momentum vs vivace's Nesterov SGD).

Training images/s are timed over `--batches` batches after WARMUP untimed ones, so they leave out
model/allocator warm-up and data-loader startup but include decoding or cache reads, augmentation,
forward, backward and the optimizer step. vivace's presize cache is built (once, on first use)
before any clock starts; its build time is printed. TTA images/s = images / seconds of one
`learn.tta(n=4)` call over the same `--tta-images` validation files on `--tta-arch` (xresnet18,
the issue's figure), after a one-batch warm-up call; fastai's per-pass worker startup is part of
its `tta`, so it is counted. Each side runs in a fresh process, `--rounds` times, interleaved
(fastai, vivace-fp32, vivace, then in reverse, ...): fastai as it runs by default (fp32 on a CPU:
its `to_bf16()` autocasts CUDA only), vivace with the process settings `vivace train` applies
(`vivace.runtime.configure_process`: reuse of freed memory) in fp32 (`vivace-fp32`, amp off)
and as `vivace train` runs (`vivace`: amp auto, bf16 autocast on CPUs with AMX); the ratios of
means of the last are recorded.
`--record` writes fastai_ratio_train (xresnet50 only) and
fastai_ratio_tta (vivace / fastai) into docs/benchmarks.json, each with a note of the two
precisions and the ratio at equal precision (vivace-fp32 / fastai); `--min-ratio` makes it a check.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")  # fastai imports timm-era jit code

import fastai  # noqa: E402
import numpy as np  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from fastai.vision.all import (SGD, Adam, CancelFitException, CategoryBlock, CrossEntropyLossFlat,  # noqa: E402
                               DataBlock, GrandparentSplitter, ImageBlock, Normalize, Resize,
                               aug_transforms, get_image_files, imagenet_stats, parent_label)
from fastai.vision.all import Callback as FastaiCallback  # noqa: E402
from fastai.vision.all import Learner as FastaiLearner  # noqa: E402
from fastai.vision.all import accuracy as fastai_accuracy  # noqa: E402
from fastai.vision.models import xresnet as fastai_xresnet  # noqa: E402

import vivace  # noqa: E402
from vivace.data import BatchLoader, make_dataloaders  # noqa: E402
from vivace.learner import Learner  # noqa: E402
from vivace.models import create_model  # noqa: E402
from vivace.runtime import autocast_dtype  # noqa: E402

from .common import (VIVACE_AMP, Stopwatch, VivaceClock, add_data_arg, check_no_workers,  # noqa: E402
                     data_folder, interleaved_children, machine, make_parser, record, side_dataloaders)

WARMUP = 3  # untimed batches: worker startup, allocator and thread pools warming up
PRESIZE = 160  # px: the chapter's Resize(160) item transform = vivace's presize cache
MIN_SCALE = 0.35  # the chapter's aug_transforms(min_scale=0.35)
LR = 3e-3  # the chapter's fit_one_cycle(5, 3e-3); irrelevant to speed
RECORDED_ARCH = "xresnet50"  # the architecture fastai_ratio_train stands for


class FastaiClock(FastaiCallback):
    """fastai side: tick after each batch; cancel the fit after the last timed one."""

    def __init__(self, watch: Stopwatch):
        self.watch = watch

    def after_batch(self):
        if self.training and self.watch.tick():
            raise CancelFitException()  # fastai's own way to stop a fit early


def versions() -> str:
    return (f"torch {torch.__version__}, torchvision {torchvision.__version__}, fastai {fastai.__version__}, "
            f"vivace {vivace.__version__}, pillow {PIL.__version__}, numpy {np.__version__}")


def fastai_dls(path: Path, bs: int, size: int):
    """The chapter's DataBlock, verbatim apart from the size arguments."""
    dblock = DataBlock(blocks=(ImageBlock(), CategoryBlock()), get_items=get_image_files, get_y=parent_label,
                       splitter=GrandparentSplitter(valid_name="val"), item_tfms=Resize(PRESIZE),
                       batch_tfms=[*aug_transforms(size=size, min_scale=MIN_SCALE),
                                   Normalize.from_stats(*imagenet_stats)])
    return dblock.dataloaders(path, bs=bs, num_workers=2)


def fastai_learner(dls, arch: str, opt: str) -> FastaiLearner:
    model = getattr(fastai_xresnet, arch)(n_out=dls.c)
    learn = FastaiLearner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=fastai_accuracy,
                          opt_func=Adam if opt == "adam" else SGD)
    if hasattr(learn, "to_channelslast"):
        learn.to_channelslast(use_amp=False)
    else:
        print(f"note: fastai {fastai.__version__} has no Learner.to_channelslast; model stays NCHW")
        learn.model.to(memory_format=torch.channels_last)
    return learn


def vivace_learner(dls, arch: str, opt: str, amp: str, cbs=None) -> Learner:
    learn = Learner(dls, create_model(arch, n_out=dls.c), cbs=cbs, opt_func="adamw" if opt == "adam" else "sgd",
                    amp=amp)
    learn.recorder.print_table = False
    return learn


def fastai_train(dls, arch: str, opt: str, batches: int) -> float:
    torch.manual_seed(0)
    learn = fastai_learner(dls, arch, opt)
    watch = Stopwatch(WARMUP, batches, dls.device)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, LR, cbs=[FastaiClock(watch)])
    return watch.images_per_s(dls.train.bs)


def vivace_train(dls, arch: str, opt: str, batches: int, amp: str) -> float:
    torch.manual_seed(0)
    watch = Stopwatch(WARMUP, batches, dls.device)
    learn = vivace_learner(dls, arch, opt, amp, cbs=[VivaceClock(watch)])
    learn.fit_one_cycle(1, LR)
    return watch.images_per_s(dls.train.batch_size)


def subset_loader(dls, n: int, bs: int) -> BatchLoader:
    """The first `n` validation images of vivace's source order, with the validation transform."""
    idx = dls.valid.indices[:n]
    return BatchLoader(dls.cache, idx, dls.valid.labels[:n], bs, shuffle=False, drop_last=False,
                       device=dls.device, transform=dls.valid.transform)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()  # both tta calls end with predictions on the CPU: the clock sees finished work
    return time.perf_counter() - start


def fastai_tta(dls, files: list[Path], arch: str, opt: str, bs: int) -> float:
    learn = fastai_learner(dls, arch, opt)
    warm = dls.test_dl(files[:bs], with_labels=True, bs=bs)
    dl = dls.test_dl(files, with_labels=True, bs=bs)
    with learn.no_bar(), learn.no_logging():
        learn.tta(dl=warm, n=1)
        return len(files) / timed(lambda: learn.tta(dl=dl, n=4))


def vivace_tta(dls, n_images: int, arch: str, opt: str, bs: int, amp: str) -> float:
    learn = vivace_learner(dls, arch, opt, amp)
    learn.tta(dl=subset_loader(dls, bs, bs), n=1)
    return n_images / timed(lambda: learn.tta(dl=subset_loader(dls, n_images, bs), n=4))


# fastai as it runs by default; vivace with `vivace train`'s process settings, in fp32 and under its
# default amp (common.VIVACE_AMP). Each in its own process.
SIDES = ("fastai", "vivace-fp32", "vivace")


def child(side: str, args) -> None:
    """One side's training (and TTA) images/s, printed as a JSON line."""
    v_dls = side_dataloaders(side, args.data, args.size, args.bs, PRESIZE, MIN_SCALE)
    n_tta = min(args.tta_images, len(v_dls.valid.indices))
    if side == "fastai":
        f_dls = fastai_dls(args.data, args.bs, args.size)
        rates = {"train": fastai_train(f_dls, args.arch, args.opt, args.batches)}
        check_no_workers("fastai training")
        if n_tta:
            files = [(v_dls.source.train_files + v_dls.source.valid_files)[i] for i in v_dls.valid.indices[:n_tta]]
            rates["tta"] = fastai_tta(f_dls, files, args.tta_arch, args.opt, args.bs)
            check_no_workers("fastai TTA")
    else:
        amp = VIVACE_AMP[side]
        rates = {"train": vivace_train(v_dls, args.arch, args.opt, args.batches, amp)}
        if n_tta:
            rates["tta"] = vivace_tta(v_dls, n_tta, args.tta_arch, args.opt, args.bs, amp)
    print(json.dumps(rates))


def vivace_tta_missing() -> str | None:
    """Why vivace's TTA cannot run (it is written separately, in vivace/tta.py), or None."""
    if not hasattr(Learner, "tta"):
        return "vivace's Learner has no tta(): TTA ratio not measured"
    try:
        importlib.import_module("vivace.tta")
    except ImportError as exc:
        return f"vivace.tta does not import ({exc}): TTA ratio not measured"
    return None


def ratio_line(name: str, peer: float, ours: float) -> str:
    return f"{name:<52} fastai {peer:7.1f} img/s   vivace {ours:7.1f} img/s   vivace/fastai {ours / peer:5.2f}x"


def main(argv: list[str]) -> int:
    parser = make_parser("peer_fastai", __doc__)
    add_data_arg(parser)
    parser.add_argument("--arch", default="xresnet50", choices=["xresnet50", "xresnet18"], help="trained model")
    parser.add_argument("--batches", type=int, default=10, help="timed training batches per library")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--size", type=int, default=128, help="training crop, px")
    parser.add_argument("--opt", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--tta-arch", default="xresnet18", choices=["xresnet50", "xresnet18"])
    parser.add_argument("--tta-images", type=int, default=256, help="validation images for TTA; 0 skips TTA")
    parser.add_argument("--record", action="store_true", help="write the ratios into docs/benchmarks.json")
    parser.add_argument("--min-ratio", type=float, default=None, help="exit 1 if any vivace/fastai ratio is below")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each side, interleaved")
    parser.add_argument("--child", choices=SIDES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data = data_folder(parser.prog, args.data)
    if args.child:
        child(args.child, args)
        return 0
    if not (args.data / "train").is_dir() or not (args.data / "val").is_dir():
        parser.error(f"--data {args.data} needs train/ and val/ folders (GrandparentSplitter)")
    if args.batches < 1 or args.bs < 1 or args.size % 32 or args.tta_images < 0 or args.rounds < 1:
        parser.error("need --batches >= 1, --bs >= 1, --size a multiple of 32, --tta-images >= 0, --rounds >= 1")
    if args.record and args.arch != RECORDED_ARCH:
        parser.error(f"--record stores the {RECORDED_ARCH} training figure: drop --arch or --record")

    print(machine())
    print(versions())
    start = time.perf_counter()  # cache build (first use only) + loaders: startup, never timed below
    v_dls = make_dataloaders(args.data, size_px=args.size, presize_px=PRESIZE, batch_size=args.bs,
                             augment=dict(min_scale=MIN_SCALE), progress=False)
    print(f"vivace data setup {time.perf_counter() - start:.1f} s (builds the presize cache on first use)")
    tta_failure = vivace_tta_missing() if args.tta_images else None
    print(f"{len(v_dls.train.indices)} training images; {args.batches} timed batches after {WARMUP} warm-up; "
          f"bs {args.bs}, {args.size} px, opt {args.opt}, device {v_dls.device}; "
          f"{args.rounds} rounds of {', '.join(SIDES)}, each in a fresh process")

    child_argv = argv + (["--tta-images", "0"] if tta_failure else [])  # --data or its variable: inherited
    results = interleaved_children("peer_fastai", child_argv, SIDES, args.rounds)
    mean = {side: {step: statistics.mean(r[step] for r in rs) for step in rs[0]} for side, rs in results.items()}
    n_tta = min(args.tta_images, len(v_dls.valid.indices))
    names = {"train": f"train {args.arch}", "tta": f"TTA n=4 {args.tta_arch} {n_tta} images"}
    for step, peer in mean["fastai"].items():
        print(ratio_line(names[step] + ", vivace in fp32", peer, mean["vivace-fp32"][step]))
        print(ratio_line(names[step] + ", vivace as it trains", peer, mean["vivace"][step]))
    ratios = {f"fastai_ratio_{step}": mean["vivace"][step] / peer for step, peer in mean["fastai"].items()}

    if args.record:
        vivace_precision = "bf16" if autocast_dtype(v_dls.device, VIVACE_AMP["vivace"]) == torch.bfloat16 else "fp32"
        notes = {f"fastai_ratio_{step}": f"vivace in {vivace_precision} (as vivace train runs here) / fastai in fp32 "
                                         f"(its CPU default); at equal precision (fp32) "
                                         f"{mean['vivace-fp32'][step] / peer:.2f}x"
                 for step, peer in mean["fastai"].items()}
        record(precision=f"vivace {vivace_precision} / fastai fp32", notes=notes,
               **{k: round(v, 3) for k, v in ratios.items()})
        print(f"recorded {', '.join(ratios)} in docs/benchmarks.json")
    if tta_failure:
        print(f"error: {tta_failure}", file=sys.stderr)
        return 1
    low = {k: v for k, v in ratios.items() if args.min_ratio is not None and v < args.min_ratio}
    if low:
        print(f"FAIL: below --min-ratio {args.min_ratio}: " + ", ".join(f"{k} {v:.2f}" for k, v in low.items()),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
