"""Train a Recipe: resolve it for the device, start the run folder, build, fit, summarize, report."""
from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import distributed
from .build import build_dataloaders, build_learner
from .callbacks import Callback
from .distributed import World
from .files import DiskFullError, ensure_writable_folder
from .budget import Budget, format_duration
from .checkpoint import load_on_main
from .choose import CHOSEN_FIELDS, choose_for_budget
from .data import DataLoaders, DataSpec
from .learner import Learner, TrainingFailed, TrainingInterrupted
from .recipe import MAX_SEED, Recipe, TrainOptions, describe, load_recipe, resolve, scaling_rule
from .schedule import ScheduleSpec
from .tracking import TensorBoardCallback
from .transfer import InitSpec, start_from
from .records import write_json
from .runs import (check_before_start, default_out, delete_records, finished_message, finished_summary,
                   forget_run_folder, kept_checkpoint, load_run, nothing_to_resume, resume_command, resume_learner,
                   run_folder_lock, run_start, start_run_folder)
from .runtime import configure_process

__all__ = ["train", "train_once", "TrainingFailed", "TrainingInterrupted"]


def train(recipe: Recipe, options: TrainOptions = TrainOptions(), cbs: list[Callback] | None = None) -> dict[str, Any]:
    """Train `options.runs` seeded runs; with several, report mean and std of the final metrics."""
    recipe.validate()
    options.validate()
    if recipe.seed + options.runs - 1 > MAX_SEED:
        raise ValueError(f"seed={recipe.seed} with runs={options.runs} needs seeds up to "
                         f"{recipe.seed + options.runs - 1}, past {MAX_SEED}: choose a smaller --seed")
    out = Path(options.out) if options.out else default_out()
    # Under torchrun the process group starts first: rank 0 alone checks `out` (other machines may not
    # see it), and a refusal stops every rank.
    distributed.init_distributed(options.dist_timeout_s)
    if distributed.restart_count() > 0 and not options.resume:
        # torchrun restarted the job after a failure: go on from its checkpoint, with what it chose
        recipe = distributed.main_answer(lambda: as_chosen(recipe, out)) if options.choose else recipe
        options = replace(options, resume=True, choose=False)
    distributed.main_answer(lambda: check_before_start(recipe, out, options.runs, options.resume, options.overwrite))
    if options.tensorboard:
        ensure_writable_folder(Path(options.tensorboard), f"--tensorboard {options.tensorboard}")
    try:
        with run_folder_lock(out):  # one process at a time trains in a folder
            return train_runs(recipe, out, options, cbs)
    except TrainingInterrupted as err:
        raise TrainingInterrupted(f"{err}; continue with: {resume_command(out, options)}") from None


def as_chosen(recipe: Recipe, out: Path) -> Recipe:
    """`recipe` with the model and sizes the run in `out` chose for its budget (its config.json), if any."""
    if not (out / "config.json").is_file():
        return recipe
    saved = load_recipe(out / "config.json")
    return replace(recipe, **{name: getattr(saved, name) for name in CHOSEN_FIELDS})


def train_runs(recipe: Recipe, out: Path, options: TrainOptions, cbs: list[Callback] | None) -> dict[str, Any]:
    """`train` once `out` is checked and locked: a resume keeps finished runs as they are."""
    folders = [out] if options.runs == 1 else [out / f"run{i}" for i in range(options.runs)]
    finished = distributed.main_answer(lambda: finished_runs(out, folders, recipe.planned_epochs, options.resume))
    if options.overwrite and distributed.rank() == 0:
        delete_records(out, options.runs)
    if options.runs == 1:
        return train_once(recipe, out, options, cbs)
    summaries = []
    for i, (folder, summary) in enumerate(zip(folders, finished)):
        if summary is not None and distributed.rank() == 0:
            print(f"{folder} is finished: kept as it is, its summary.json counts", flush=True)
        summaries.append(summary or train_once(replace(recipe, seed=recipe.seed + i), folder, run_options(options, i), cbs))
    keys = [k for k, v in summaries[0].items() if isinstance(v, float)]
    combined = {k: {"mean": statistics.mean(s[k] for s in summaries),
                    "std": statistics.stdev(s[k] for s in summaries)} for k in keys}
    if distributed.rank() == 0:
        write_json(out / "summary.json", {"runs": summaries, "weights": "final", **combined})
    return combined


def finished_runs(out: Path, folders: list[Path], epochs: int | None, resume: bool) -> list[dict[str, Any] | None]:
    """Each run folder's saved summary when a --resume finds it finished, else None; ValueError when
    all are finished (nothing is rewritten). Rank 0's answer under torchrun (`distributed.main_answer`)."""
    finished = [finished_summary(folder, epochs) if resume else None for folder in folders]
    if all(finished) and (len(folders) == 1 or (out / "summary.json").is_file()):
        raise ValueError(finished_message(out, epochs))
    return finished


def train_once(recipe: Recipe, out: Path, options: TrainOptions = TrainOptions(),
               cbs: list[Callback] | None = None) -> dict[str, Any]:
    """One seeded run into `out`; returns the summary written to summary.json."""
    configure_process(options.threads, options.reuse_memory)
    world = distributed.init_distributed(options.dist_timeout_s)
    asked, recipe = recipe, on_device(recipe, world)
    # Rank 0 reads the run folder (other machines may not see it); a refusal stops every rank.
    found = distributed.main_answer(lambda: run_start(out, recipe, world.device, options.resume))
    if world.is_main:  # only rank 0 writes anything
        if found.change:
            warnings.warn(found.change)
        if options.resume and not found.resumes:
            print(nothing_to_resume(out), flush=True)
        start_run_folder(out, recipe, describe(asked, recipe, world.device, options.preset, world.world_size))
    try:
        learn, recipe = prepared_learner(recipe, out, options, world, cbs, found.resumes)
    except (ValueError, FileNotFoundError, RuntimeError):
        if found.fresh and world.is_main:  # nothing trained: the corrected rerun must not need --resume
            forget_run_folder(out)
        raise
    start = time.perf_counter()
    try:
        learn.fit_schedule(**recipe.kwargs(ScheduleSpec))
    except TrainingFailed as err:  # no summary or report: the run did not finish
        raise TrainingFailed(f"{err}; {kept_checkpoint(out)}") from None
    except DiskFullError as err:  # checkpoints are written whole: the run goes on from the last one
        raise DiskFullError(err.path, err.code, f"resume the run: vivace train --out {out} --resume") from None
    # The metrics of the final weights, the ones evaluate, export and report use by default.
    summary = {**learn.state.last_metrics, "weights": "final", "epochs": len(learn.recorder.rows),
               "train_seconds": round(time.perf_counter() - start, 2), "seed": recipe.seed, "preset": options.preset,
               **budget_summary(learn)}
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


def budget_summary(learn: Learner) -> dict[str, float]:
    """A budgeted run's timing against its deadline (said in one line too); nothing for a run in epochs."""
    clock = learn.state.clock
    if clock is None:
        return {}
    seconds, late = clock.budget.seconds, clock.late_s()
    epochs = learn.state.epoch + (learn.state.iter + 1) / max(learn.state.n_batches, 1)
    learn.log(f"budget {format_duration(seconds)}: the final validation ended at {format_duration(seconds + late)}, "
              f"{abs(late):.1f} s {'late' if late > 0 else 'early'}; {epochs:.2f} epochs trained")
    return {"budget_s": seconds, "budget_used_s": round(seconds + late, 2), "late_s": round(late, 2),
            "epochs_trained": round(epochs, 3)}


def run_options(options: TrainOptions, i: int) -> TrainOptions:
    """The options of the i-th of several seeded runs: each writes its TensorBoard scalars to its
    own subfolder (run<i>, as its run folder), so the runs' curves stay apart."""
    if not options.tensorboard:
        return options
    return replace(options, tensorboard=str(Path(options.tensorboard) / f"run{i}"))


def prepared_learner(recipe: Recipe, out: Path, options: TrainOptions, world: World,
                     cbs: list[Callback] | None, resumes: bool) -> tuple[Learner, Recipe]:
    """The run's data and Learner, restored from its last checkpoint when it `resumes`, or started from
    --init; and the recipe it trains (under a budget with `options.choose`: the one chosen for the budget)."""
    preparing = time.perf_counter()
    dls = build_dataloaders(recipe, world, options.workers)
    budget_started = time.perf_counter()  # data preparation happens once: a budget counts from here
    checkpoint = out / "last.safetensors"
    saved = load_on_main(checkpoint) if resumes else None  # rank 0's checkpoint, on every rank
    if recipe.budget_s:
        spent = saved["position"].get("budget_spent_s", 0.0) if saved else 0.0
        if world.is_main:
            print(budget_line(recipe.budget_s, spent, budget_started - preparing), flush=True)
        if options.choose:
            recipe, dls = chosen_for_budget(recipe, dls, Budget(recipe.budget_s, started=budget_started), out,
                                            options, world)
    trackers = [TensorBoardCallback(options.tensorboard)] if options.tensorboard else []
    learn = build_learner(recipe, dls, out, options.checkpoint_every_min, extra_cbs=[*(cbs or []), *trackers])
    if saved:
        resume_learner(learn, checkpoint, saved, recipe.planned_epochs)
        learn.log(f"resuming {out} at epoch {learn.resume.epoch}, batch {learn.resume.batch}")
    elif recipe.init:  # a resumed run has its weights from its checkpoint
        learn.log(start_from(learn.model, **recipe.kwargs(InitSpec), vocab=dls.vocab))
    if recipe.budget_s:
        learn.budget_started = budget_started
    return learn, recipe


def budget_line(budget_s: float, spent_s: float, preparing_s: float) -> str:
    """What a budgeted run has left, and that the data's preparation was not counted."""
    left = (f"{format_duration(budget_s - spent_s)} of the {format_duration(budget_s)} budget left" if spent_s
            else f"budget {format_duration(budget_s)}")
    return (f"{left}, counted from now to the end of the final validation; preparing the data took "
            f"{format_duration(preparing_s)}, not counted")


def chosen_for_budget(recipe: Recipe, dls: DataLoaders, budget: Budget, out: Path, options: TrainOptions,
                      world: World) -> tuple[Recipe, DataLoaders]:
    """The recipe `vivace.choose` picks for the budget, said in one line and saved as the run's recipe;
    its data rebuilt (from the same cache) where its sizes differ."""
    choice = choose_for_budget(recipe, dls, budget)
    if world.is_main:
        print(choice.reason, flush=True)
        start_run_folder(out, choice.recipe, describe(choice.recipe, choice.recipe, world.device, options.preset,
                                                      world.world_size))
    if choice.recipe.kwargs(DataSpec) != recipe.kwargs(DataSpec):
        dls = build_dataloaders(choice.recipe, world, options.workers, progress=False)
    return choice.recipe, dls


def on_device(recipe: Recipe, world: World) -> Recipe:
    """The recipe as it runs here (`resolve`), said in one line if the device changes its batch and lr."""
    resolved = resolve(recipe, world.device)
    if world.is_main and resolved.batch_size != recipe.batch_size:
        print(f"{world.device.type}: batch {resolved.batch_size} (cuda_batch_size) instead of {recipe.batch_size}, "
              f"lr {recipe.lr:g} -> {resolved.lr:.3g} ({scaling_rule(recipe.lr_scaling, recipe.optimizer)} scaling); "
              f"--batch-size sets one batch for every device", flush=True)
    return resolved
