"""Training throughput: end-to-end (cache -> augment -> model -> optimizer) vs the model alone.

    python -m bench throughput --data PATH [--archs xresnet50 xresnet18] [--batches 8] [--record]

For each model at 128 px, batch 64, channels_last, SGD: images/s of vivace's Learner loop on
Imagenette from the presize cache with augmentation, the ceiling (the same steps on a random
batch already in memory), and the achieved GFLOP/s against the measured matmul peak of the
precision it trains in (`--amp auto`, as `vivace train`: bf16 autocast on CPUs with AMX, else
fp32; `--amp off`: fp32). Training FLOPs are counted as 3x the forward multiply-adds x 2.
`--record` writes xresnet50's fraction and the peak into docs/benchmarks.json.
"""
from __future__ import annotations

import sys

import torch

from .common import Stopwatch, VivaceClock, add_data_arg, data_folder, machine, make_parser, matmul_peak_gflops, record
from vivace.data import make_dataloaders
from vivace.learner import Learner
from vivace.models import count_macs, create_model
from vivace.optim import make_optimizer
from vivace.runtime import autocast, autocast_dtype, compile_mode, reuse_freed_memory

WARMUP = 2  # batches not timed: allocator and thread pools warming up


def mode_of(compile: bool | str) -> str:
    """The torch.compile mode of a benchmark's `compile` switch: True or a mode name."""
    return compile if isinstance(compile, str) else "default"


def end_to_end(arch: str, dls, batches: int, amp: str = "auto", compile: bool | str = False) -> float:
    """vivace's own loop on real cached data with augmentation (its defaults for the device)."""
    torch.manual_seed(0)
    watch = Stopwatch(WARMUP + 1, batches, dls.device)
    learn = Learner(dls, create_model(arch, n_out=len(dls.vocab)), cbs=[VivaceClock(watch)], amp=amp,
                    compile=bool(compile), compile_mode=mode_of(compile))
    learn.recorder.print_table = False
    learn.fit_one_cycle(1, 1e-3)
    return watch.images_per_s(dls.train.batch_size)


def ceiling(arch: str, bs: int, size: int, n_out: int, batches: int, channels_last: bool = True,
            opt_name: str = "sgd", device: torch.device = torch.device("cpu"),
            amp_dtype: torch.dtype | None = None, compile: bool | str = False, fused: bool | None = None,
            **model_kwargs) -> float:
    """The same training step on one random batch already in memory (model_kwargs: act, ...).

    With `compile` (True or a mode) the model is torch.compile'd; the compile happens in the
    untimed warm-up steps.
    """
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(arch, n_out=n_out, **model_kwargs).to(device, memory_format=layout).train()
    opt = make_optimizer(model, opt_name, lr=1e-3, fused=fused)
    step_model = torch.compile(model, mode=compile_mode(mode_of(compile))) if compile else model
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, n_out, (bs,), device=device)
    watch, done = Stopwatch(WARMUP + 1, batches, device), False
    while not done:
        with autocast(device, amp_dtype):
            loss = torch.nn.functional.cross_entropy(step_model(x), y)
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


def compare_blocks(arch: str, bs: int, size: int, n_out: int, batches: int,
                   amp_dtype: torch.dtype | None = None) -> None:
    """What Mish and self-attention cost per training step, each against ReLU (timed before and after)."""
    rates = {name: ceiling(arch, bs, size, n_out, batches, amp_dtype=amp_dtype, **kw) for name, kw in BLOCK_VARIANTS}
    relu = (rates["relu"] + rates["relu again"]) / 2
    for name, rate in rates.items():
        print(f"{arch} {name:<22} ceiling {rate:6.1f} img/s = {rate / relu:.2f}x ReLU's")


def alternate(arch: str, args, n_out: int, name_a: str, name_b: str, a: dict, b: dict, rounds: int = 2) -> None:
    """Ceilings of two variants timed a, b, b, a, ... (drift hits both alike), and their ratio."""
    rates: dict[str, list[float]] = {name_a: [], name_b: []}
    for i in range(rounds):
        order = ((name_a, a), (name_b, b)) if i % 2 == 0 else ((name_b, b), (name_a, a))
        for name, kw in order:
            rates[name].append(ceiling(arch, args.bs, args.size, n_out, args.batches, **kw))
    mean = {name: sum(r) / len(r) for name, r in rates.items()}
    print(f"{arch}: ceiling {name_a} {', '.join(f'{r:.1f}' for r in rates[name_a])} img/s, "
          f"{name_b} {', '.join(f'{r:.1f}' for r in rates[name_b])} img/s: {name_b} is {mean[name_b] / mean[name_a]:.2f}x")


def main(argv: list[str]) -> None:
    parser = make_parser("throughput", __doc__)
    add_data_arg(parser)
    parser.add_argument("--archs", nargs="+", default=["xresnet50", "xresnet18"])
    parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--compare-layout", action="store_true",
                        help="also time the ceiling without channels_last (the default's evidence)")
    parser.add_argument("--compare-blocks", action="store_true",
                        help="also time the ceiling with Mish, and Mish + self-attention (the 5-epoch preset's model)")
    parser.add_argument("--compare-amp", action="store_true",
                        help="also time the ceiling in fp32 and in bf16 autocast, alternating (bf16's evidence)")
    parser.add_argument("--compare-compile", action="store_true",
                        help="also time the ceiling torch.compile'd, alternating with eager (compile is slow)")
    parser.add_argument("--compare-stem", action="store_true",
                        help="also time the half-width model's ceiling with its stem at full and at half width")
    parser.add_argument("--amp", default="auto", choices=["auto", "off"],
                        help="auto: as vivace train (bf16 autocast on CPUs with AMX); off: fp32")
    parser.add_argument("--record", action="store_true",
                        help="write xresnet50's matmul peak fraction into docs/benchmarks.json")
    parser.add_argument("--no-reuse-memory", action="store_true",
                        help="keep glibc's allocator defaults (vivace train reuses freed memory)")
    args = parser.parse_args(argv)
    data = data_folder(parser.prog, args.data)
    if not args.no_reuse_memory:
        reuse_freed_memory()  # as `vivace train` does (Recipe.reuse_memory)
    print(machine())
    dls = make_dataloaders(data, size_px=args.size, presize_px=160, batch_size=args.bs, progress=False)
    amp_dtype = autocast_dtype(dls.device, args.amp)
    peaks = {"fp32": matmul_peak_gflops()}
    if amp_dtype == torch.bfloat16:
        peaks["bf16"] = matmul_peak_gflops(dtype=torch.bfloat16)
    precision = "bf16" if amp_dtype == torch.bfloat16 else "fp32"
    print(", ".join(f"{name} matmul peak: {gflops:.1f} GFLOP/s" for name, gflops in peaks.items())
          + f"; training in {precision}")
    fractions = {}
    for arch in args.archs:
        flops_per_image = 3 * 2 * count_macs(create_model(arch, n_out=len(dls.vocab)), args.size)
        top = ceiling(arch, args.bs, args.size, len(dls.vocab), args.batches, device=dls.device, amp_dtype=amp_dtype)
        e2e = end_to_end(arch, dls, args.batches, args.amp)
        fractions[arch] = top * flops_per_image / 1e9 / peaks[precision]
        print(f"{arch}: end to end {e2e:6.1f} img/s, ceiling {top:6.1f} img/s "
              f"({e2e / top:.0%} of ceiling); model compute {top * flops_per_image / 1e9:.1f} GFLOP/s "
              f"= {fractions[arch]:.0%} of the {precision} matmul peak")
        if args.compare_layout:
            nchw = ceiling(arch, args.bs, args.size, len(dls.vocab), args.batches, channels_last=False)
            print(f"{arch}: ceiling without channels_last {nchw:6.1f} img/s: channels_last is {top / nchw:.2f}x")
        if args.compare_blocks:
            compare_blocks(arch, args.bs, args.size, len(dls.vocab), args.batches, amp_dtype)
        if args.compare_amp:
            alternate(arch, args, len(dls.vocab), "fp32", "bf16 autocast", dict(amp_dtype=None),
                      dict(amp_dtype=torch.bfloat16))
        if args.compare_compile:
            alternate(arch, args, len(dls.vocab), "eager", "compiled", dict(amp_dtype=amp_dtype),
                      dict(amp_dtype=amp_dtype, compile=True))
        if args.compare_stem:  # the budget's second candidate (vivace.choose)
            alternate(arch, args, len(dls.vocab), "widen 0.5", "widen 0.5, stem_widen 0.5",
                      dict(amp_dtype=amp_dtype, widen=0.5), dict(amp_dtype=amp_dtype, widen=0.5, stem_widen=0.5))
    if args.record and "xresnet50" in fractions:
        # The figure is against the fp32 peak in fp32; a bf16 run is recorded beside it.
        suffix = "" if precision == "fp32" else "_bf16"
        record(precision=precision, **{f"matmul_peak_gflops{suffix}": round(peaks[precision], 1),
                                       f"matmul_peak_fraction{suffix}": round(fractions["xresnet50"], 3)})


if __name__ == "__main__":
    main(sys.argv[1:])
