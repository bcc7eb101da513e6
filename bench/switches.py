"""The speed switches not covered elsewhere: optimizer implementation, training and evaluation batch size.

    python -m bench switches [--arch xresnet50] [--batches 4]

- optimizer step: ms per `opt.step()` over the model's parameters (random gradients) for SGD,
  AdamW and Ranger with PyTorch's per-tensor loop (`foreach=False`, its CPU default) and its
  multi-tensor kernels (`foreach=True`), and AdamW/SGD with `fused=True`;
- training batch size: the model-only training step of `python -m bench throughput` at batch 32, 64, 128;
- evaluation batch size: the forward pass (no autograd) at batch 64, 128, 256.
Each list is timed in order and then its first entry again, to show drift.
"""
from __future__ import annotations

import sys
import time

import torch

from vivace.models import create_model
from vivace.optim import make_optimizer, param_groups
from vivace.runtime import reuse_freed_memory

from .common import machine, make_parser
from .throughput import ceiling, eval_ceiling

N_OUT = 10


def optimizer_step_ms(model: torch.nn.Module, make, steps: int) -> float:
    """Best ms per step of the optimizer `make(model)` after one warm-up step."""
    opt = make(model)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def optimizer_variants() -> list[tuple[str, object]]:
    variants = []
    for name in ("sgd", "adamw", "ranger"):
        for foreach in (False, True):
            variants.append((f"{name} foreach={foreach}",
                             lambda m, n=name, f=foreach: make_optimizer(m, n, lr=1e-3, foreach=f)))
    variants.append(("sgd fused=True", lambda m: torch.optim.SGD(param_groups(m, 5e-5), lr=1e-3, momentum=0.9,
                                                                  nesterov=True, fused=True)))
    variants.append(("adamw fused=True", lambda m: torch.optim.AdamW(param_groups(m, 0.01), lr=1e-3,
                                                                      betas=(0.9, 0.99), eps=1e-6, fused=True)))
    return variants


def main(argv: list[str]) -> None:
    p = make_parser("switches", __doc__)
    p.add_argument("--arch", default="xresnet50")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batches", type=int, default=4, help="timed batches per batch-size measurement")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant")
    args = p.parse_args(argv)
    reuse_freed_memory()  # as `vivace train` does
    print(machine())
    model = create_model(args.arch, n_out=N_OUT)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch}: {n_params / 1e6:.1f} M parameters")
    variants = optimizer_variants()
    for name, make in variants + variants[:1]:
        print(f"optimizer step  {name:<22} {optimizer_step_ms(model, make, args.steps):7.1f} ms")
    for bs in (32, 64, 128, 32):
        rate = ceiling(args.arch, bs, args.size, N_OUT, args.batches)
        print(f"training   batch {bs:>3}: {rate:6.1f} img/s ({bs / rate * 1e3:6.0f} ms per step)")
    for bs in (64, 128, 256, 64):
        rate = eval_ceiling(args.arch, bs, args.size, N_OUT, args.batches)
        print(f"evaluation batch {bs:>3}: {rate:6.1f} img/s")


if __name__ == "__main__":
    main(sys.argv[1:])
