"""Run by tests/test_distributed.py under torchrun: train a tiny recipe and dump what each rank saw."""
import json
import os
import sys
import time
from pathlib import Path

from safetensors.torch import save_file

from vivace import distributed
from vivace.callbacks import Callback
from vivace.recipe import TrainOptions, make_recipe
from vivace.train import train_once


class DieAt(Callback):
    """Simulates a crashed rank: exits hard at its second batch."""

    def after_batch(self, learn) -> None:
        if learn.state.iter == 1:
            os._exit(3)


class ShardSpy(Callback):
    """Records which training items this rank drew each epoch, and its final weights."""

    def __init__(self, dump: Path):
        self.dump, self.seen = dump, {}

    def before_epoch(self, learn) -> None:
        from vivace.data.loader import shard_indices
        loader = learn.dls.train
        order = shard_indices(len(loader.indices), learn.state.epoch, loader.seed, True, loader.rank,
                              loader.world_size, True, loader.batch_size)
        self.seen[learn.state.epoch] = loader.indices[order].tolist()

    def after_fit(self, learn) -> None:
        rank = distributed.rank()
        state = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
        save_file(state, str(self.dump / f"weights{rank}.safetensors"))
        train_items = learn.dls.train.indices.tolist()
        (self.dump / f"rank{rank}.json").write_text(json.dumps(
            {"seen": self.seen, "all_train": train_items, "metrics": learn.state.last_metrics}))


def stall_or_train(data: str, out: Path, stall_rank: str) -> int:
    """One rank joins the group and goes silent (as if SIGSTOPped); the others run `vivace train`."""
    from vivace.cli import main
    if os.environ["RANK"] == stall_rank:
        distributed.init_distributed()
        time.sleep(600)  # torchrun ends this process once another rank has failed
    return main(["train", "--data", data, "--out", str(out), "--dist-timeout-s", os.environ["STALL_TIMEOUT_S"],
                 "--arch", "xresnet18", "--widen", "0.25", "--size", "16", "--presize", "24", "--epochs", "2",
                 "--bs", "8", "--valid-bs", "5", "--workers", "1"])


class DieOnceAt(Callback):
    """A worker lost mid-epoch (killed, out of memory), on the job's first attempt only."""

    def after_batch(self, learn) -> None:
        if (learn.state.epoch, learn.state.iter) == (1, 1) and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
            os._exit(9)


def elastic(data: str, out: Path, die: bool) -> None:
    """`train` as a user runs it under torchrun --max-restarts: one --out for all ranks, no --resume."""
    from vivace.train import train
    recipe = make_recipe(data=data, arch="xresnet18", widen=0.25, size=16, presize=24, epochs=3, bs=8,
                         valid_bs=5, lr=1e-2)
    cbs = [DieOnceAt()] if die and os.environ["RANK"] == "1" else []
    train(recipe, TrainOptions(workers=1, out=str(out)), cbs=cbs)


class StepCount(Callback):
    """Counts this rank's training steps and where its fit ended. Rank 1 steps slower and starts its
    budget later, so the ranks' own clocks disagree: only rank 0's decision keeps them in step."""

    def __init__(self, dump: Path):
        self.dump, self.steps = dump, 0

    def before_fit(self, learn) -> None:
        if distributed.rank() == 1:
            learn.state.clock.end += 1.0  # its own deadline a second later than rank 0's

    def after_batch(self, learn) -> None:
        self.steps += 1
        if distributed.rank() == 1:
            time.sleep(0.02)

    def after_fit(self, learn) -> None:
        state = learn.state
        (self.dump / f"steps{distributed.rank()}.json").write_text(json.dumps(
            {"steps": self.steps, "epoch": state.epoch, "iter": state.iter, "progress": state.progress}))


def budgeted(data: str, out: Path, dump: Path) -> None:
    """A budgeted run under torchrun: every rank must stop on the same step."""
    from vivace.train import train
    recipe = make_recipe(data=data, arch="xresnet18", widen=0.25, size=16, presize=24, bs=8, valid_bs=5, lr=1e-2,
                         budget_s=float(os.environ["BUDGET"]))
    train(recipe, TrainOptions(workers=1, out=str(out)), cbs=[StepCount(dump)])


if __name__ == "__main__":
    data, base, dump = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if os.environ.get("BUDGET"):
        sys.exit(budgeted(data, base / "run", dump))
    if os.environ.get("STALL_RANK"):
        sys.exit(stall_or_train(data, base / "out0", os.environ["STALL_RANK"]))
    if os.environ.get("ELASTIC"):
        sys.exit(elastic(data, base / "run", die=os.environ["ELASTIC"] == "die"))
    world = distributed.init_distributed()
    # FINE_TUNE_FROM: start from that run's weights, one epoch frozen (the ranks re-wrap DDP on unfreezing).
    init = dict(init=os.environ["FINE_TUNE_FROM"], freeze_epochs=1) if os.environ.get("FINE_TUNE_FROM") else {}
    recipe = make_recipe(data=data, arch="xresnet18", widen=0.25, size=16, presize=24, epochs=2, bs=8,
                         valid_bs=5, lr=1e-2, **init)
    # One --out per rank here (the same path in real use) so the test can see who wrote what.
    cbs = [ShardSpy(dump)]
    if os.environ.get("DIE_RANK") == str(world.rank):
        cbs.append(DieAt())
    train_once(recipe, base / f"out{world.rank}", TrainOptions(workers=1), cbs=cbs)
