"""Training throughput: end-to-end (cache -> augment -> model -> optimizer) vs the model alone.

    .venv/bin/python bench/train.py [--archs xresnet50 xresnet18] [--batches 8]

For each model at 128 px, batch 64, channels_last, SGD: images/s of vivace's Learner loop on
Imagenette from the presize cache with augmentation, the ceiling (the same steps on a random
batch already in memory), and the achieved GFLOP/s against the measured fp32 matmul peak.
Training FLOPs are counted as 3x the forward multiply-adds x 2 (forward + backward).
"""
from __future__ import annotations

import argparse

import torch

from common import DEFAULT_DATA, Stopwatch, VivaceClock, machine, matmul_peak_gflops, record
from vivace.data import make_dataloaders
from vivace.learner import Learner
from vivace.models import count_macs, create_model
from vivace.optim import make_optimizer
from vivace.runtime import reuse_freed_memory

WARMUP = 2  # batches not timed: allocator and thread pools warming up


def end_to_end(arch: str, dls, batches: int) -> float:
    """vivace's own loop on real cached data with augmentation (its defaults for the device)."""
    torch.manual_seed(0)
    watch = Stopwatch(WARMUP + 1, batches, dls.device)
    learn = Learner(dls, create_model(arch, n_out=len(dls.vocab)), cbs=[VivaceClock(watch)])
    learn.recorder.print_table = False
    learn.fit_one_cycle(1, 1e-3)
    return watch.images_per_s(dls.train.batch_size)


def ceiling(arch: str, bs: int, size: int, n_out: int, batches: int, channels_last: bool = True,
            opt_name: str = "sgd", device: torch.device = torch.device("cpu"),
            amp_dtype: torch.dtype | None = None, **model_kwargs) -> float:
    """The same training step on one random batch already in memory (model_kwargs: act, ...)."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(arch, n_out=n_out, **model_kwargs).to(device, memory_format=layout).train()
    opt = make_optimizer(model, opt_name, lr=1e-3)
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, n_out, (bs,), device=device)
    watch, done = Stopwatch(WARMUP + 1, batches, device), False
    while not done:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = watch.tick()
    return watch.images_per_s(bs)


def eval_ceiling(arch: str, bs: int, size: int, n_out: int, batches: int) -> float:
    """Evaluation's forward pass (eval mode, no autograd) on one random batch in memory."""
    torch.manual_seed(0)
    model = create_model(arch, n_out=n_out).to(memory_format=torch.channels_last).eval()
    x = torch.randn(bs, 3, size, size).contiguous(memory_format=torch.channels_last)
    watch, done = Stopwatch(WARMUP + 1, batches, x.device), False
    with torch.no_grad():
        while not done:
            model(x)
            done = watch.tick()
    return watch.images_per_s(bs)


BLOCK_VARIANTS = (("relu", dict(act="relu")), ("mish", dict(act="mish")),
                  ("mish + self-attention", dict(act="mish", self_attention=True)), ("relu again", dict(act="relu")))


def compare_blocks(arch: str, bs: int, size: int, n_out: int, batches: int) -> None:
    """What Mish and self-attention cost per training step, each against ReLU (timed before and after)."""
    rates = {name: ceiling(arch, bs, size, n_out, batches, **kw) for name, kw in BLOCK_VARIANTS}
    relu = (rates["relu"] + rates["relu again"]) / 2
    for name, rate in rates.items():
        print(f"{arch} {name:<22} ceiling {rate:6.1f} img/s = {rate / relu:.2f}x ReLU's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--archs", nargs="+", default=["xresnet50", "xresnet18"])
    parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--compare-layout", action="store_true",
                        help="also time the ceiling without channels_last (the default's evidence)")
    parser.add_argument("--compare-blocks", action="store_true",
                        help="also time the ceiling with Mish, and Mish + self-attention (the 5-epoch preset's model)")
    parser.add_argument("--no-reuse-memory", action="store_true",
                        help="keep glibc's allocator defaults (vivace train reuses freed memory)")
    args = parser.parse_args()
    if not args.no_reuse_memory:
        reuse_freed_memory()  # as `vivace train` does (Recipe.reuse_memory)
    print(machine())
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s")
    dls = make_dataloaders(args.data, size=args.size, presize=160, bs=args.bs, progress=False)
    fractions = {}
    for arch in args.archs:
        flops_per_image = 3 * 2 * count_macs(create_model(arch, n_out=len(dls.vocab)), args.size)
        top = ceiling(arch, args.bs, args.size, len(dls.vocab), args.batches)
        e2e = end_to_end(arch, dls, args.batches)
        fractions[arch] = top * flops_per_image / 1e9 / peak
        print(f"{arch}: end to end {e2e:6.1f} img/s, ceiling {top:6.1f} img/s "
              f"({e2e / top:.0%} of ceiling); model compute {top * flops_per_image / 1e9:.1f} GFLOP/s "
              f"= {fractions[arch]:.0%} of matmul peak")
        if args.compare_layout:
            nchw = ceiling(arch, args.bs, args.size, len(dls.vocab), args.batches, channels_last=False)
            print(f"{arch}: ceiling without channels_last {nchw:6.1f} img/s: channels_last is {top / nchw:.2f}x")
        if args.compare_blocks:
            compare_blocks(arch, args.bs, args.size, len(dls.vocab), args.batches)
    if "xresnet50" in fractions:
        record(matmul_peak_gflops=round(peak, 1), matmul_peak_fraction=round(fractions["xresnet50"], 3))


if __name__ == "__main__":
    main()
