"""Data-parallel training on torch.distributed, launched by torchrun (no home-made engine).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op and
training runs in one process. gloo on CPU, nccl on CUDA, one GPU per process.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .environment import env_int, env_seconds

DEFAULT_TIMEOUT_S = 1800  # a rank that stops answering fails the others after this, never hangs
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(timeout_s: float = 0.0) -> World:
    """Join the process group torchrun describes in the environment (once); else a world of one.

    A collective that waits longer than `timeout_s` for another rank fails (0: the environment's
    VIVACE_DIST_TIMEOUT, else DEFAULT_TIMEOUT_S).
    """
    if world_size() == 1:
        return World()
    world = World(env_int("RANK", 0, low=0), world_size(), env_int("LOCAL_RANK", 0, low=0))
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s or env_seconds("VIVACE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        store = attempt_store(timeout)
        if store is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout, store=store, rank=world.rank, world_size=world.world_size)
    return world


def attempt_store(timeout: timedelta) -> dist.Store | None:
    """The store of torchrun's agent, its keys prefixed by this attempt; None when torchrun keeps no store.

    After a `--max-restarts` restart, the restarted workers' default store still held the dead
    workers' addresses: gloo connected to them and failed ("Connection refused", torch 2.13,
    reproduced without vivace). A prefix per attempt gives each start keys of its own.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], env_int("MASTER_PORT", 0, low=1), world_size(),
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"/vivace/attempt_{restart_count()}", store)


def restart_count() -> int:
    """How many times torchrun (`--max-restarts`) has restarted this job's workers after a failure; 0 first."""
    return env_int("TORCHELASTIC_RESTART_COUNT", 0, low=0)


def job_id() -> str:
    """torchrun's id of this job, the same on every rank and across its restarts; "" without torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "") if world_size() > 1 else ""


def world_size() -> int:
    """The number of training processes torchrun started (WORLD_SIZE), 1 without torchrun."""
    return env_int("WORLD_SIZE", 1, low=1)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def rank() -> int:
    """This process's rank: from the process group, else from torchrun's environment, else 0."""
    return dist.get_rank() if is_distributed() else env_int("RANK", 0, low=0)


def wrap_model(model: nn.Module) -> nn.Module:
    """DistributedDataParallel around `model` when distributed: gradients averaged in backward."""
    if not is_distributed():
        return model
    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics, so evaluation is the same on all ranks."""
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def gather_all(t: Tensor) -> Tensor:
    """Concatenate a tensor's rows from every rank (shards may differ in length by one)."""
    if not is_distributed():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def mean_all(t: Tensor) -> Tensor:
    """The mean of a tensor over every rank (the tensor itself in one process)."""
    if not is_distributed():
        return t
    total = t.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def from_main(values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank (the values themselves in one process): one small broadcast."""
    if not is_distributed():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def main_answer(ask: Callable[[], T]) -> T:
    """`ask()` run by rank 0 alone, its answer on every rank: one pickled broadcast (`ask()` in one process).

    For what only rank 0's machine may hold (the run folder, its checkpoint): the other ranks never
    read it, and every rank takes the same branch after it. A ValueError or OSError that `ask`
    raises is raised on every rank; any other error is a bug and ends rank 0, which fails the
    others at this broadcast.
    """
    if not is_distributed():
        return ask()
    answer: list = [(None, None)]  # (the value, or the error it raised)
    if dist.get_rank() == 0:
        try:
            answer = [(ask(), None)]
        except (ValueError, OSError) as err:
            answer = [(None, err)]
    dist.broadcast_object_list(answer, src=0)
    value, error = answer[0]
    if error is not None:
        raise error
    return value


def cleanup() -> None:
    """Leave the process group (end of training)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
