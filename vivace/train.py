"""Train a Recipe: data -> model -> Learner with the recipe's techniques -> run directory."""
from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from . import distributed
from .callbacks import EMA, Callback, CutMix, Mixup, MixupOrCutMix, ProgressiveResize
from .checkpoint import CheckpointSaver, load_checkpoint, restore_learner
from .data import DataLoaders, make_dataloaders, resolve_data
from .data.datasets import DATASETS
from .data.sources import make_source
from .distributed import World
from .learner import Learner, TrainingFailed
from .losses import CrossEntropy, LabelSmoothingCrossEntropy
from .metrics import accuracy, calibration_error, nll, top_k_accuracy
from .models import create_model
from .outputs import ensure_writable_folder
from .recipe import Recipe, for_device, load_recipe, scaling_rule
from .records import RunLogger, write_json
from .runtime import configure_process
from .schedule import SizeSchedule


def top5_accuracy(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Top-5 accuracy."""
    return top_k_accuracy(preds, target, 5)


def build_dataloaders(recipe: Recipe, world: World = World(), progress: bool = True) -> DataLoaders:
    """The recipe's data: cache, loaders, augmentation and normalization (this rank's shard).

    Under torchrun rank 0 builds the presize cache while the others wait, then they reuse it.
    `recipe.batch_size` is the global batch: each of the N processes takes batch_size // N. `progress`: rank 0
    prints the split and the cache's progress.
    """
    augment = dict(min_scale=recipe.min_scale, flip=recipe.flip, max_rotate=recipe.max_rotate_deg,
                   max_zoom=recipe.max_zoom, max_warp=recipe.max_warp, max_lighting=recipe.max_lighting,
                   trivial=recipe.trivial_augment, crop=recipe.train_crop)
    bs = max(recipe.batch_size // world.world_size, 1)
    if not world.is_main:
        distributed.barrier()
    dls = make_dataloaders(recipe.data or None, size=recipe.size_px, valid_size=recipe.valid_size_px or None,
                           valid_crop=recipe.valid_crop, presize=recipe.presize_px,
                           bs=bs, valid_bs=recipe.valid_batch_size or eval_batch_size(bs, world.device),
                           augment=augment, normalize=recipe.normalize,
                           stats=recipe.stats, seed=recipe.seed, device=world.device, rank=world.rank,
                           world_size=world.world_size, workers=recipe.workers or None,
                           progress=progress and world.is_main, valid_name=recipe.valid_name,
                           max_aspect=recipe.max_aspect, valid_view=recipe.valid_view,
                           data_on_device=recipe.data_on_device)
    if world.is_main:
        distributed.barrier()
    return dls


def eval_batch_size(train_bs: int, device: torch.device) -> int:
    """Recipe.valid_bs = 0: 128 on a CPU (where larger batches gained nothing); on CUDA twice the
    training batch, at least 128 (no gradients or saved activations: far less memory per image)."""
    return max(128, 2 * train_bs) if device.type == "cuda" else 128


def technique_callbacks(recipe: Recipe) -> list[Callback]:
    """The chapter's techniques the recipe switches on, as callbacks."""
    cbs: list[Callback] = []
    if recipe.mixup_alpha > 0 and recipe.cutmix_alpha > 0:
        cbs.append(MixupOrCutMix(recipe.mixup_alpha, recipe.cutmix_alpha, seed=recipe.seed))
    elif recipe.mixup_alpha > 0:
        cbs.append(Mixup(recipe.mixup_alpha, seed=recipe.seed))
    elif recipe.cutmix_alpha > 0:
        cbs.append(CutMix(recipe.cutmix_alpha, seed=recipe.seed))
    if recipe.ema_decay > 0:
        cbs.append(EMA(recipe.ema_decay))
    if recipe.progressive > 0:
        cbs.append(ProgressiveResize(SizeSchedule(recipe.size_px, recipe.progressive, recipe.progressive_end)))
    return cbs


def build_learner(recipe: Recipe, dls: DataLoaders, out: Path, extra_cbs: list[Callback] | None = None) -> Learner:
    """Model, loss, metrics and callbacks for the recipe (plus any `extra_cbs` of the caller)."""
    torch.manual_seed(recipe.seed)  # same seed -> same initial weights
    model = create_model(recipe.arch, n_out=len(dls.vocab), widen=recipe.widen, act=recipe.act,
                         self_attention=recipe.self_attention, blur_pool=recipe.blur_pool,
                         max_blur_pool=recipe.max_blur_pool)
    loss = LabelSmoothingCrossEntropy(recipe.label_smoothing) if recipe.label_smoothing else CrossEntropy()
    cbs = technique_callbacks(recipe)
    cbs += [CheckpointSaver(out, "accuracy", recipe.checkpoint_every_min), RunLogger(out), *(extra_cbs or [])]
    learn = Learner(dls, model, loss, metrics=[accuracy, top5_accuracy, nll, calibration_error], cbs=cbs,
                    opt_func=recipe.opt, wd=recipe.weight_decay, mom=recipe.momentum,
                    channels_last=recipe.channels_last, amp=recipe.amp,
                    compile=recipe.compile and recipe.compile_mode, sync_bn=recipe.sync_bn)
    learn.valid_every = recipe.valid_every
    return learn


def fit(learn: Learner, recipe: Recipe) -> None:
    """Run the recipe's schedule."""
    if recipe.schedule == "flat_cos":
        learn.fit_flat_cos(recipe.epochs, recipe.lr, pct_start=recipe.pct_start)
    else:
        learn.fit_one_cycle(recipe.epochs, recipe.lr, pct_start=recipe.pct_start)


def train_once(recipe: Recipe, out: Path, cbs: list[Callback] | None = None) -> dict[str, Any]:
    """One seeded run into `out`; returns the summary written to summary.json."""
    configure_process(recipe.threads, recipe.reuse_memory)
    world = distributed.init_distributed(recipe.dist_timeout_s)
    recipe = on_device(recipe, world)
    checkpoint = out / "last.safetensors"
    if world.is_main:  # only rank 0 writes anything
        if recipe.resume and not checkpoint.is_file():
            print(nothing_to_resume(out), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        # The recipe first: a run killed while its data downloads or caches can be resumed.
        # `overwrite` is an action on the folder, not part of the recipe: a resume must not repeat it.
        write_json(out / "config.json", {**recipe.to_dict(), "overwrite": False})
    dls = build_dataloaders(recipe, world)
    learn = build_learner(recipe, dls, out, extra_cbs=cbs)
    if recipe.resume and checkpoint.is_file():
        restore_learner(learn, load_checkpoint(checkpoint, learn.device))
        learn.log(f"resuming {out} at epoch {learn.resume.epoch}, batch {learn.resume.batch}")
    start = time.perf_counter()
    try:
        fit(learn, recipe)
    except TrainingFailed as err:  # no summary or report: the run did not finish
        raise TrainingFailed(f"{err}; {kept_checkpoint(out)}") from None
    # The metrics of the final weights, the ones evaluate, export and report use by default.
    summary = {**learn.state.last_metrics, "weights": "final", "epochs": len(learn.recorder.rows),
               "train_seconds": round(time.perf_counter() - start, 2), "seed": recipe.seed}
    if world.is_main:
        write_json(out / "summary.json", summary)
    from .report import write_report  # lazy: matplotlib adds ~0.6 s to `import vivace`
    if world.world_size > 1:
        # The report scores the whole validation set in order: rank 0 rebuilds it alone.
        distributed.cleanup()
        if world.is_main:
            write_report(out, load_run(out))
    else:
        write_report(out, learn)
    return summary


def on_device(recipe: Recipe, world: World) -> Recipe:
    """The recipe with this device's batch and learning rate (`for_device`), said in one line if they change."""
    resolved = for_device(recipe, world.device)
    if world.is_main and resolved.batch_size != recipe.batch_size:
        print(f"{world.device.type}: batch {resolved.batch_size} (cuda_batch_size) instead of {recipe.batch_size}, "
              f"lr {recipe.lr:g} -> "
              f"{resolved.lr:.3g} ({scaling_rule(recipe.lr_scaling, recipe.opt)} scaling); --batch-size sets one batch "
              f"for every device", flush=True)
    return resolved


def kept_checkpoint(out: Path) -> str:
    """Where a failed run's last good weights are, for its error message."""
    last = out / "last.safetensors"  # never written after a failure
    return f"the last good checkpoint is kept: {last}" if last.is_file() else "no checkpoint was written"


def nothing_to_resume(out: Path) -> str:
    if (out / "config.json").is_file():  # stopped before its first checkpoint, e.g. while caching
        return f"nothing to resume in {out} (no last.safetensors yet): training its recipe (config.json) from the start"
    # e.g. the first start of an elastic torchrun job that always says --resume
    return f"nothing to resume in {out} (no last.safetensors): starting a new run"


def default_out() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


# The files that make a folder a run: replacing them loses the run, keeping some mixes two runs.
RUN_RECORDS = ("config.json", "log.csv", "summary.json", "last.safetensors", "best.safetensors")


def existing_records(out: Path, runs: int) -> list[Path]:
    """The run records already in `out` (and in its run0, run1, ... for several runs)."""
    folders = [out] + [out / f"run{i}" for i in range(runs) if runs > 1]
    return [folder / name for folder in folders for name in RUN_RECORDS if (folder / name).is_file()]


def check_before_start(recipe: Recipe, out: Path) -> None:
    """Fail before any heavy work: the data must exist, --out be writable (it is created) with no run to lose."""
    if recipe.data not in DATASETS:  # a folder: it exists and has a usable split (listing only, no decoding)
        with warnings.catch_warnings():  # what was skipped is said once, when the data is built
            warnings.simplefilter("ignore")
            make_source(resolve_data(recipe.data or None), valid_name=recipe.valid_name)
    ensure_writable_folder(out, f"--out {out}")
    found = existing_records(out, recipe.runs)
    if found and not (recipe.resume or recipe.overwrite):
        names = ", ".join(str(p.relative_to(out)) for p in found)
        raise ValueError(f"--out {out} already holds a run ({names}): pass --resume to continue it, "
                         f"--overwrite to replace it, or choose another --out")


def delete_records(out: Path, runs: int) -> None:
    """--overwrite: remove the old run's records before the new run writes any."""
    # Deleted, not left to be overwritten: an old last.safetensors would be resumed under the new
    # recipe, and an old summary.json would describe a run that no longer exists.
    for path in existing_records(out, runs):
        path.unlink()


def train(recipe: Recipe, cbs: list[Callback] | None = None) -> dict[str, Any]:
    """Train `recipe.runs` seeded runs; with several, report mean and std of the final metrics."""
    recipe.validate()
    out = Path(recipe.out) if recipe.out else default_out()
    check_before_start(recipe, out)
    if recipe.overwrite and distributed.rank() == 0:
        delete_records(out, recipe.runs)
    if recipe.runs == 1:
        return train_once(recipe, out, cbs)
    summaries = [train_once(replace(recipe, seed=recipe.seed + i), out / f"run{i}", cbs) for i in range(recipe.runs)]
    keys = [k for k, v in summaries[0].items() if isinstance(v, float)]
    combined = {k: {"mean": statistics.mean(s[k] for s in summaries),
                    "std": statistics.stdev(s[k] for s in summaries)} for k in keys}
    write_json(out / "summary.json", {"runs": summaries, "weights": "final", **combined})
    return combined


WeightsChoice = Literal["final", "best"]
# Which checkpoint file holds each choice (CheckpointSaver): `last` is rewritten after every epoch,
# so at the end of the fit it holds the final weights; `best` the epoch with the best accuracy.
WEIGHT_FILES: dict[str, str] = {"final": "last.safetensors", "best": "best.safetensors"}


@dataclass(frozen=True)
class SavedWeights:
    """Which weights a rebuilt run holds: final or best, their file, and where training was."""

    kind: str
    file: str
    epoch: int  # epochs finished when the weights were saved
    batch: int = 0  # > 0: saved inside the next epoch (the run stopped mid-epoch)

    def __str__(self) -> str:
        within = f" + {self.batch} batches" if self.batch else ""
        return f"{self.kind} ({self.file}, epoch {self.epoch}{within})"


def load_run(run_dir: Path, weights: WeightsChoice = "final", **overrides: Any) -> Learner:
    """A Learner rebuilt from a run directory's config.json with its final (or best) weights."""
    return load_run_weights(run_dir, weights, **overrides)[0]


def load_run_weights(run_dir: Path, weights: WeightsChoice = "final",
                     **overrides: Any) -> tuple[Learner, SavedWeights]:
    """`load_run`, plus which weights were loaded (for output that says what it scored).

    final = the model at the end of training (with EMA, the average), as `train` reports it;
    best = the epoch with the best validation accuracy, chosen on the validation set (so its
    validation score is optimistic).
    """
    if weights not in WEIGHT_FILES:
        raise ValueError(f"weights={weights!r} is not one of: {', '.join(WEIGHT_FILES)}")
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json): pass the --out of a `vivace train` run")
    recipe = Recipe(**{**load_recipe(config).to_dict(), **overrides, "resume": False})
    recipe.validate()
    configure_process(recipe.threads, recipe.reuse_memory)  # the run's speed settings (2x for evaluation)
    # Quiet: the run's split was said when it trained (`learn.dls.source.split_note` has it).
    learn = build_learner(recipe, build_dataloaders(recipe, progress=False), run_dir)
    state = load_checkpoint(run_dir / WEIGHT_FILES[weights], learn.device)
    learn.model.load_state_dict(state.get("eval_model", state["model"]))  # EMA runs: the average
    position = state["position"]
    return learn, SavedWeights(weights, WEIGHT_FILES[weights], int(position["epoch"]), int(position["batch"]))
