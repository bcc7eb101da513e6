"""Train a Recipe: resolve it for the device, start the run folder, build, fit, summarize, report."""
from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import distributed
from .build import build_dataloaders, build_learner
from .callbacks import Callback
from .checkpoint import load_checkpoint, restore_learner
from .distributed import World
from .files import DiskFullError, ensure_writable_folder
from .learner import TrainingFailed, TrainingInterrupted
from .recipe import Recipe, TrainOptions, describe, resolve, scaling_rule
from .schedule import ScheduleSpec
from .tracking import TensorBoardCallback
from .transfer import InitSpec, start_from
from .records import write_json
from .runs import (check_before_start, default_out, delete_records, kept_checkpoint, load_run, nothing_to_resume,
                   resume_command, start_run_folder)
from .runtime import configure_process

__all__ = ["train", "train_once", "TrainingFailed", "TrainingInterrupted"]


def train(recipe: Recipe, options: TrainOptions = TrainOptions(), cbs: list[Callback] | None = None) -> dict[str, Any]:
    """Train `options.runs` seeded runs; with several, report mean and std of the final metrics."""
    recipe.validate()
    options.validate()
    out = Path(options.out) if options.out else default_out()
    check_before_start(recipe, out, options.runs, options.resume, options.overwrite)
    if options.tensorboard:
        ensure_writable_folder(Path(options.tensorboard), f"--tensorboard {options.tensorboard}")
    if options.overwrite and distributed.rank() == 0:
        delete_records(out, options.runs)
    try:
        if options.runs == 1:
            return train_once(recipe, out, options, cbs)
        summaries = [train_once(replace(recipe, seed=recipe.seed + i), out / f"run{i}", run_options(options, i), cbs)
                     for i in range(options.runs)]
    except TrainingInterrupted as err:
        raise TrainingInterrupted(f"{err}; continue with: {resume_command(out, options)}") from None
    keys = [k for k, v in summaries[0].items() if isinstance(v, float)]
    combined = {k: {"mean": statistics.mean(s[k] for s in summaries),
                    "std": statistics.stdev(s[k] for s in summaries)} for k in keys}
    write_json(out / "summary.json", {"runs": summaries, "weights": "final", **combined})
    return combined


def train_once(recipe: Recipe, out: Path, options: TrainOptions = TrainOptions(),
               cbs: list[Callback] | None = None) -> dict[str, Any]:
    """One seeded run into `out`; returns the summary written to summary.json."""
    configure_process(options.threads, options.reuse_memory)
    world = distributed.init_distributed(options.dist_timeout_s)
    asked, recipe = recipe, on_device(recipe, world)
    checkpoint = out / "last.safetensors"
    if world.is_main:  # only rank 0 writes anything
        if options.resume and not checkpoint.is_file():
            print(nothing_to_resume(out), flush=True)
        start_run_folder(out, recipe, describe(asked, recipe, world.device, options.preset, world.world_size))
    dls = build_dataloaders(recipe, world, options.workers)
    trackers = [TensorBoardCallback(options.tensorboard)] if options.tensorboard else []
    learn = build_learner(recipe, dls, out, options.checkpoint_every_min, extra_cbs=[*(cbs or []), *trackers])
    if options.resume and checkpoint.is_file():
        restore_learner(learn, load_checkpoint(checkpoint, learn.device))
        learn.log(f"resuming {out} at epoch {learn.resume.epoch}, batch {learn.resume.batch}")
    elif recipe.init:  # a resumed run has its weights from its checkpoint
        learn.log(start_from(learn.model, **recipe.kwargs(InitSpec), vocab=dls.vocab))
    start = time.perf_counter()
    try:
        learn.fit_schedule(**recipe.kwargs(ScheduleSpec))
    except TrainingFailed as err:  # no summary or report: the run did not finish
        raise TrainingFailed(f"{err}; {kept_checkpoint(out)}") from None
    except DiskFullError as err:  # checkpoints are written whole: the run goes on from the last one
        raise DiskFullError(err.path, err.code, f"resume the run: vivace train --out {out} --resume") from None
    # The metrics of the final weights, the ones evaluate, export and report use by default.
    summary = {**learn.state.last_metrics, "weights": "final", "epochs": len(learn.recorder.rows),
               "train_seconds": round(time.perf_counter() - start, 2), "seed": recipe.seed, "preset": options.preset}
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


def run_options(options: TrainOptions, i: int) -> TrainOptions:
    """The options of the i-th of several seeded runs: each writes its TensorBoard scalars to its
    own subfolder (run<i>, as its run folder), so the runs' curves stay apart."""
    if not options.tensorboard:
        return options
    return replace(options, tensorboard=str(Path(options.tensorboard) / f"run{i}"))


def on_device(recipe: Recipe, world: World) -> Recipe:
    """The recipe as it runs here (`resolve`), said in one line if the device changes its batch and lr."""
    resolved = resolve(recipe, world.device)
    if world.is_main and resolved.batch_size != recipe.batch_size:
        print(f"{world.device.type}: batch {resolved.batch_size} (cuda_batch_size) instead of {recipe.batch_size}, "
              f"lr {recipe.lr:g} -> {resolved.lr:.3g} ({scaling_rule(recipe.lr_scaling, recipe.optimizer)} scaling); "
              f"--batch-size sets one batch for every device", flush=True)
    return resolved
