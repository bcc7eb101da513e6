"""The prepared GPU benchmark (issue #22): model step and end to end per batch size, each switch on and off.

    python -m bench gpu [--arch xresnet50] [--bs 64 256 512] [--batches 30] [--switch-bs 256] [--peers]

Meant for a lent CUDA GPU, in under 8 minutes. For each batch size it times, after WARMUP untimed
batches (bf16 autocast on CUDA, channels_last, SGD):
- the model step alone: one random batch already on the device (forward, backward, step);
- vivace's Learner end to end, presize cache -> augmentation on the device -> model -> optimizer,
  with the cache resident on the device (`data_on_device on`, the CUDA default where it fits)
  and prefetched from host memory (`off`);
and at `--switch-bs` (0 skips it) both again under `torch.compile(mode="reduce-overhead")` (the
step replayed as CUDA graphs), and the model step with each optimizer's foreach and fused
implementations (SGD, AdamW; Ranger's RAdam has no fused one). The device machine sees only the repository, so the data is the
embedded Imagenette subset, its training list repeated until an epoch holds every timed batch.
`--peers` also runs `python -m bench peer_fastai` and `peer_timm` on that folder, each in its own
process, where fastai and timm are installed (their own vivace-vs-peer ratios, printed).
On CUDA it writes everything into docs/benchmarks.json under `gpu` (device, torch, date).
Without CUDA it runs the same code on the CPU in fp32 and records nothing: that checks the
script, not the machine.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import subprocess
import sys
import time

import torch

from vivace.data import make_dataloaders
from vivace.data.datasets import embedded_path
from vivace.data.sources import Source, make_source
from vivace.runtime import autocast_dtype

from .common import cpu_name, machine, make_parser, record
from .throughput import WARMUP, ceiling, end_to_end

GRAPHS = "reduce-overhead"  # torch.compile's CUDA-graph mode


def repeated_source(n_images: int) -> Source:
    """The embedded dataset with its training files repeated to at least `n_images`."""
    source = make_source(embedded_path())
    times = math.ceil(n_images / len(source.train_files))
    return dataclasses.replace(source, train_files=source.train_files * times,
                               train_labels=source.train_labels * times)


def measure(source: Source, arch: str, bs: int, size: int, batches: int, compile: bool | str = False) -> dict:
    """Model step and end to end (cache on the device, then from the host) at one batch size."""
    row = {"bs": bs, "compile": compile or "off"}
    for data_on_device in ("on", "off"):
        dls = make_dataloaders(source, size_px=size, presize_px=160, batch_size=bs, progress=False, data_on_device=data_on_device)
        if "model_step" not in row:
            row["model_step"] = round(ceiling(arch, bs, size, len(dls.vocab), batches, device=dls.device,
                                              amp_dtype=autocast_dtype(dls.device, "auto"), compile=compile), 1)
        row[f"end_to_end_data_{data_on_device}"] = round(end_to_end(arch, dls, batches, compile=compile), 1)
    return row


def optimizer_rows(arch: str, bs: int, size: int, batches: int, device: torch.device) -> list[dict]:
    """The model step with each optimizer's default implementation (foreach on CUDA) and its fused one."""
    rows = []
    for opt in ("sgd", "adamw", "ranger"):
        for fused in ((False, True) if opt != "ranger" else (False,)):
            step = ceiling(arch, bs, size, 10, batches, opt_name=opt, device=device,
                           amp_dtype=autocast_dtype(device, "auto"), fused=fused or None)
            impl = "fused" if fused else "default"  # torch's default: foreach on CUDA
            rows.append({"bs": bs, "opt": opt, "impl": impl, "model_step": round(step, 1)})
            print(f"{arch} {size} px, batch {bs}, {opt} {rows[-1]['impl']}: model step {step:.1f} img/s", flush=True)
    return rows


def describe(row: dict) -> str:
    step, on, off = row["model_step"], row["end_to_end_data_on"], row["end_to_end_data_off"]
    return (f"batch {row['bs']}, compile {row['compile']}: model step {step:.1f} img/s, end to end {on:.1f} img/s "
            f"({on / step:.0%} of the model step; data prefetched from the host instead: {off:.1f}, {off / step:.0%})")


def peer_results(arch: str, bs: int, size: int, batches: int) -> dict:
    """Each peer's benchmark in its own process where its library is installed: the last lines it printed."""
    results = {}
    for peer, library in (("peer_fastai", "fastai"), ("peer_timm", "timm")):
        if importlib.util.find_spec(library) is None:
            results[peer] = f"{library} is not installed here: not measured"
            continue
        cmd = [sys.executable, "-m", "bench", peer, "--data", str(embedded_path()), "--arch", arch,
               "--bs", str(bs), "--size", str(size), "--batches", str(batches), "--rounds", "1"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        results[peer] = "\n".join((out.stdout + out.stderr).strip().splitlines()[-3:])
    for peer, text in results.items():
        print(f"{peer}: {text}")
    return results


def main(argv: list[str]) -> None:
    parser = make_parser("gpu", __doc__)
    parser.add_argument("--arch", default="xresnet50")
    parser.add_argument("--bs", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    parser.add_argument("--switch-bs", type=int, default=256,
                        help=f"the batch size also timed under torch.compile mode {GRAPHS!r} and with each "
                             "optimizer implementation; 0 skips them")
    parser.add_argument("--peers", action="store_true", help="also run the fastai and timm benchmarks, where installed")
    args = parser.parse_args(argv)
    source = repeated_source((args.batches + WARMUP + 1) * max(args.bs))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the loaders' own choice
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "no CUDA: CPU, fp32"
    print(f"{machine()}; {name}; autocast {autocast_dtype(device, 'auto')}")
    rows = []
    for bs in args.bs:
        rows.append(measure(source, args.arch, bs, args.size, args.batches))
        print(f"{args.arch} {args.size} px, {describe(rows[-1])}", flush=True)
    optimizers = []
    if args.switch_bs:
        rows.append(measure(source, args.arch, args.switch_bs, args.size, args.batches, compile=GRAPHS))
        print(f"{args.arch} {args.size} px, {describe(rows[-1])}", flush=True)
        optimizers = optimizer_rows(args.arch, args.switch_bs, args.size, args.batches, device)
    peers = peer_results(args.arch, 256, args.size, args.batches) if args.peers else {}
    if device.type == "cuda":
        record(stamp=False, gpu=dict(
            device=name, host=cpu_name(), date=time.strftime("%Y-%m-%d"), torch=torch.__version__,
            arch=args.arch, size=args.size, autocast=str(autocast_dtype(device, "auto")), channels_last=True,
            opt="sgd", images_per_s=rows, optimizers=optimizers, peers=peers))


if __name__ == "__main__":
    main(sys.argv[1:])
