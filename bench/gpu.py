"""The GPU check of issue #8: xresnet50 at 128 px, bf16 autocast, channels_last, images/s.

    python -m bench gpu [--arch xresnet50] [--bs 64] [--batches 30]

Meant for a lent CUDA GPU and a few minutes. It times, after WARMUP untimed batches:
- the model step alone (one random batch already on the GPU: forward under autocast, backward,
  SGD step), and
- vivace's Learner end to end (`amp='auto'`: bf16 on CUDA; channels_last): presize cache ->
  batch augmentation on the GPU -> model -> optimizer. The device machine sees only the
  repository, so the data is the embedded Imagenette subset, its training list repeated until
  one epoch holds every timed batch (the cache then holds each image several times).
On CUDA it merges both into docs/benchmarks.json under `gpu`. Without CUDA it runs the same
code on the CPU in fp32 and records nothing: that checks the script, not the machine.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import torch

from vivace.data import make_dataloaders
from vivace.data.datasets import embedded_path
from vivace.data.sources import Source, make_source
from vivace.runtime import autocast_dtype

from .common import cpu_name, machine, make_parser, record
from .throughput import WARMUP, ceiling, end_to_end


def repeated_source(n_images: int) -> Source:
    """The embedded dataset with its training files repeated to at least `n_images`."""
    source = make_source(embedded_path())
    times = math.ceil(n_images / len(source.train_files))
    return dataclasses.replace(source, train_files=source.train_files * times,
                               train_labels=source.train_labels * times)


def main(argv: list[str]) -> None:
    parser = make_parser("gpu", __doc__)
    parser.add_argument("--arch", default="xresnet50")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    args = parser.parse_args(argv)
    dls = make_dataloaders(repeated_source((args.batches + WARMUP + 1) * args.bs), size=args.size,
                           presize=160, bs=args.bs, progress=False)
    device = dls.device  # the loaders' choice is the Learner's: CUDA where there is one
    amp_dtype = autocast_dtype(device, "auto")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "no CUDA: CPU, fp32"
    print(f"{machine()}; {name}; autocast {amp_dtype}")
    step = ceiling(args.arch, args.bs, args.size, len(dls.vocab), args.batches, device=device, amp_dtype=amp_dtype)
    e2e = end_to_end(args.arch, dls, args.batches)
    print(f"{args.arch} {args.size} px, batch {args.bs}: model step {step:.1f} img/s, "
          f"end to end {e2e:.1f} img/s ({e2e / step:.0%} of the model step)")
    if device.type == "cuda":
        record(stamp=False, gpu=dict(
            device=name, host=cpu_name(), date=time.strftime("%Y-%m-%d"), torch=torch.__version__,
            arch=args.arch, size=args.size, bs=args.bs, autocast=str(amp_dtype), channels_last=True,
            model_step_images_per_s=round(step, 1), end_to_end_images_per_s=round(e2e, 1)))


if __name__ == "__main__":
    main(sys.argv[1:])
