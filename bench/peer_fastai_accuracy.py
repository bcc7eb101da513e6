"""Accuracy parity: fastai's own Imagenette leaderboard recipe vs vivace's preset, same model and data.

    .venv-peers/bin/python -m bench peer_fastai_accuracy --data PATH [--arch xresnet18 --widen 0.5] [--epochs 5]

Answers one question about the 5-epoch preset's gap to the leaderboard (issue #8): does fastai's
recipe, run here on the --data folder (so far imagenette2-224, 224 px squares), reach more than vivace's?

- fastai 2.8.12: the leaderboard script's data (examples/train_imagenette.py `get_dbunch`:
  `RandomResizedCrop(size, min_scale=0.35)` + `FlipItem(0.5)` per item, `Normalize` per batch,
  GrandparentSplitter, 2 workers), `ranger(mom=0.9, sqr_mom=0.99, eps=1e-6)`,
  `LabelSmoothingCrossEntropy()`, `fit_flat_cos(epochs, lr, wd=1e-2, pct_start)`. Its validation
  transform (RandomResizedCrop's validation path) squashes each image to size + 24 px and keeps
  the central `size` px: 128/152 = 84.2 % of a square.
- vivace: `vivace train --preset imagenette-128-5ep` with the same model, epochs and seed, and
  `--valid-crop` set to fastai's central fraction, so both validate on the same pixels.

Both sides run under `.venv-peers` (torch 2.14.1), one after the other, in fresh processes.
Accuracy is training-noise bound (one seed each): read differences under ~0.5 points as ties.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, add_data_arg, bench_command, bench_env, data_folder, machine, make_parser

PRESET = "imagenette-128-5ep"
VAL_XTRA = 0.14  # fastai RandomResizedCrop's val_xtra


def fastai_valid_fraction(size: int) -> float:
    """The central fraction fastai's RandomResizedCrop keeps in validation (128 px: 128/152)."""
    xtra = math.ceil(size * VAL_XTRA / 8) * 8
    return size / (size + xtra)


def run_fastai(args) -> dict:
    """fastai's leaderboard script, reduced to the settings vivace's preset shares."""
    import warnings
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    import torch
    from fastai.vision.all import (CategoryBlock, DataBlock, FlipItem, GrandparentSplitter, ImageBlock,
                                   LabelSmoothingCrossEntropy, Learner, Mish, Normalize, RandomResizedCrop,
                                   accuracy, get_image_files, imagenet_stats, parent_label, ranger, set_seed)
    from fastai.vision.models import xresnet
    from functools import partial

    set_seed(args.seed, reproducible=False)
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), splitter=GrandparentSplitter(valid_name="val"),
                       get_items=get_image_files, get_y=parent_label,
                       item_tfms=[RandomResizedCrop(args.size, min_scale=0.35), FlipItem(0.5)],
                       batch_tfms=[Normalize.from_stats(*imagenet_stats)])
    dls = dblock.dataloaders(args.data, path=args.data, bs=args.bs, num_workers=2)
    act = Mish if args.act == "mish" else torch.nn.ReLU
    model = getattr(xresnet, args.arch)(n_out=dls.c, act_cls=act, sa=args.self_attention, widen=args.widen)
    opt = partial(ranger, mom=0.9, sqr_mom=0.99, eps=1e-6, beta=0.0)
    learn = Learner(dls, model, opt_func=opt, metrics=accuracy, loss_func=LabelSmoothingCrossEntropy())
    learn.to_channelslast(use_amp=False)  # fp32: fastai's default fp16 autocast is far slower on a CPU
    start = time.perf_counter()
    learn.fit_flat_cos(args.epochs, args.lr, wd=1e-2, pct_start=args.pct_start)
    seconds = time.perf_counter() - start
    loss, acc = learn.validate()
    return {"side": "fastai", "accuracy": round(float(acc), 4), "minutes": round(seconds / 60, 1)}


def vivace_command(args, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "vivace", "train", "--preset", PRESET, "--data", str(args.data),
           "--arch", args.arch, "--widen", str(args.widen), "--act", args.act, "--epochs", str(args.epochs),
           "--lr", str(args.lr), "--pct-start", str(args.pct_start), "--bs", str(args.bs),
           "--size", str(args.size), "--valid-crop", f"{fastai_valid_fraction(args.size):.4f}",
           "--seed", str(args.seed), "--out", str(out)]
    return cmd + ["--self-attention" if args.self_attention else "--no-self-attention"]


def run_vivace(args) -> dict:
    out = args.runs / f"parity-{args.arch}-w{args.widen}-{args.act}-s{args.seed}"
    start = time.perf_counter()
    subprocess.run(vivace_command(args, out), check=True)
    minutes = (time.perf_counter() - start) / 60
    summary = json.loads((out / "summary.json").read_text())
    return {"side": "vivace", "accuracy": round(summary["accuracy"], 4), "minutes": round(minutes, 1)}


def run_fastai_child(args, argv: list[str]) -> dict:
    """fastai in a fresh process (its progress table stays on screen); the result comes back in a file."""
    result = args.runs / f"parity-fastai-{args.arch}-w{args.widen}-{args.act}-s{args.seed}.json"
    subprocess.run(bench_command("peer_fastai_accuracy", [*argv, "--child", str(result)]), check=True, env=bench_env())
    return json.loads(result.read_text())


def main(argv: list[str]) -> int:
    p = make_parser("peer_fastai_accuracy", __doc__)
    add_data_arg(p)
    p.add_argument("--arch", default="xresnet18")
    p.add_argument("--widen", type=float, default=0.5)
    p.add_argument("--act", choices=("relu", "mish"), default="relu")
    p.add_argument("--self-attention", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--lr", type=float, default=8e-3)
    p.add_argument("--pct-start", type=float, default=0.72)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sides", nargs="+", choices=("fastai", "vivace"), default=["fastai", "vivace"])
    p.add_argument("--runs", type=Path, default=REPO / "runs", help="where vivace's run and fastai's result go")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # run fastai, write its result here
    args = p.parse_args(argv)
    args.data = data_folder(p.prog, args.data)
    if args.child:
        args.child.write_text(json.dumps(run_fastai(args)))
        return 0
    args.runs.mkdir(parents=True, exist_ok=True)
    print(f"{machine()}; {args.arch} widen {args.widen} {args.act} sa={args.self_attention}, {args.epochs} epochs "
          f"at {args.size} px, bs {args.bs}, Ranger lr {args.lr}, flat-cos {args.pct_start}, seed {args.seed}",
          flush=True)
    results = []
    for side in args.sides:
        results.append(run_fastai_child(args, argv) if side == "fastai" else run_vivace(args))
        print(json.dumps(results[-1]), flush=True)
    for r in results:
        print(f"{r['side']:<7} accuracy {r['accuracy']:.4f}   {r['minutes']:5.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
