"""Run folders: checked before any heavy work, locked by the one process training in them, started
(config.json, recipe.txt), replaced on --overwrite, resumed (what changed said, the checkpoint checked
against the run), and reopened (`load_run`) for evaluate, export and report."""
from __future__ import annotations

import os
import shlex
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any

import torch

from . import distributed
from .build import build_dataloaders, build_learner
from .checkpoint import (RESUME_FIELDS, WEIGHT_FILES, WeightsChoice, check_classes, class_change, load_checkpoint,
                         load_position, position_in_run, require_fields, restore_learner)
from .data import DataLoaders, data_source
from .data.datasets import DATASETS
from .data.sources import RUN_CONFIG, RUN_MARKERS
from .distributed import rank
from .files import ensure_writable_folder
from .inference import Predictor
from .learner import Learner
from .models import ModelSpec, create_model
from .normalize import Normalize
from .recipe import Recipe, TrainOptions, load_recipe, resolve
from .records import read_json_object, write_json
from .runtime import configure_process
from .transfer import check_fits

# The files that make a folder a run: replacing them loses the run, keeping some mixes two runs.
RUN_RECORDS = (RUN_CONFIG, *RUN_MARKERS)


def default_out() -> Path:
    """runs/<timestamp>; under torchrun runs/torchrun-<job id>: one folder for every rank and restart."""
    job = distributed.job_id()
    return Path("runs") / (f"torchrun-{job}" if job else time.strftime("%Y%m%d-%H%M%S"))


def existing_records(out: Path, runs: int) -> list[Path]:
    """The run records already in `out` (and in its run0, run1, ... for several runs)."""
    folders = [out] + [out / f"run{i}" for i in range(runs) if runs > 1]
    return [folder / name for folder in folders for name in RUN_RECORDS if (folder / name).is_file()]


def check_before_start(recipe: Recipe, out: Path, runs: int = 1, resume: bool = False,
                       overwrite: bool = False) -> None:
    """Fail before any heavy work: the data must exist, `out` be writable (it is created) with no run to lose."""
    if recipe.data not in DATASETS:  # a folder: it exists and has a usable split (listing only, no decoding)
        with warnings.catch_warnings():  # what was skipped is said once, when the data is built
            warnings.simplefilter("ignore")
            data_source(recipe.data, recipe.valid_name, recipe.labels, recipe.fn_col, recipe.label_col,
                        recipe.valid_col, recipe.label_delim)
    resumes = resume and (out / "last.safetensors").is_file()
    if recipe.init and not resumes:  # readable, never pickled code, and the body fits (shapes only: no weights made)
        with torch.device("meta"):
            model = create_model(**recipe.kwargs(ModelSpec), n_out=1)  # any head fits: it may be replaced
        check_fits(model, recipe.init, recipe.init_weights)
    ensure_writable_folder(out, f"--out {out}")
    found = existing_records(out, runs)
    if found and not (resume or overwrite):
        names = ", ".join(str(p.relative_to(out)) for p in found)
        go_on = ("pass --resume --epochs N (more than it trained) to train it longer" if (out / "summary.json").is_file()
                 else "pass --resume to continue it")  # a finished run has nothing left to resume
        raise ValueError(f"--out {out} already holds a run ({names}): {go_on}, --overwrite to replace it, "
                         f"or choose another --out")


def delete_records(out: Path, runs: int) -> None:
    """--overwrite: remove the old run's records before the new run writes any."""
    # Deleted, not left to be overwritten: an old last.safetensors would be resumed under the new
    # recipe, and an old summary.json would describe a run that no longer exists.
    for path in existing_records(out, runs):
        path.unlink()


def start_run_folder(out: Path, recipe: Recipe, description: str) -> None:
    """Create `out` with the recipe as it runs: config.json (to reload) and recipe.txt (to read).

    Written first, so a run killed while its data downloads or caches can be resumed.
    """
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", recipe.to_dict())
    (out / "recipe.txt").write_text(description, encoding="utf-8")


def forget_run_folder(out: Path) -> None:
    """Undo `start_run_folder` after a failure before any training: the corrected rerun needs no --resume."""
    for name in ("config.json", "recipe.txt"):
        (out / name).unlink(missing_ok=True)


LOCK_FILE = ".lock"  # flock-ed by the process training in the folder; holds its pid


@contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold `out/.lock` while a run trains in `out` (rank 0 alone under torchrun): a second vivace
    process on the folder is refused, never mixed in. Closing the file releases the lock, and so does
    the end of the process, however it ends: a killed run never leaves the folder locked."""
    if os.name != "posix" or rank() != 0:
        yield
        return
    with open(out / LOCK_FILE, "a+", encoding="utf-8") as f:
        if _lock(f, out):
            f.truncate(0)  # "a+" writes at the end, which is now the start
            f.write(f"{os.getpid()}\n")
            f.flush()
        yield


def _lock(f: IO[str], out: Path) -> bool:
    """Lock the open lock file `f` of `out`; ValueError naming the holder's pid when another process has
    it; False (and a warning) where the file system cannot lock."""
    import fcntl  # POSIX only
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read(32).strip() or "unknown"  # a pid; never a page of whatever else the file holds
        raise ValueError(f"{out} is in use by another vivace process (pid {holder}); wait for it or choose "
                         "another --out") from None
    except OSError as err:  # e.g. a network file system without locks: train, but say the risk
        warnings.warn(f"cannot lock {out} ({err.strerror}): two vivace processes training in it at once would "
                      "mix their runs")
        return False
    return True


def saved_config(out: Path, runs: int) -> tuple[Path, int] | None:
    """The config.json a `--resume` of `out` continues, and its run's index (whose seed is the first
    run's + the index); None when `out` holds none. With --runs N the configs are in run0, run1, ..."""
    folders = [out] if runs == 1 else [out / f"run{i}" for i in range(runs)]
    for i, folder in enumerate(folders):
        if (folder / "config.json").is_file():
            return folder / "config.json", i
    if runs == 1 and (out / "run0" / "config.json").is_file():
        raise ValueError(f"--out {out} holds several runs (run0, run1, ...): pass --runs N, as many as it was "
                         "started with, to resume them")
    return None


def finished_message(out: Path, epochs: int | None) -> str:
    if epochs is None:  # a budgeted run: its schedule ended with its budget
        return (f"{out} is finished (its budget is spent and its schedule complete, last.safetensors): nothing to "
                "resume; --overwrite to train it again, or choose another --out")
    return (f"{out} is finished (epoch {epochs} of {epochs} done, last.safetensors): nothing to resume; pass --epochs N "
            f"(N > {epochs}) to train it longer, --overwrite to train it again, or choose another --out")


def finished_summary(out: Path, epochs: int | None) -> dict[str, Any] | None:
    """The saved summary of the run in `out` when its last checkpoint ends its `epochs` (or, None, its
    budget); None when there is more to train or no checkpoint yet; ValueError naming the file or field
    that cannot be trusted."""
    checkpoint = out / "last.safetensors"
    if not checkpoint.is_file():
        return None
    if not position_in_run(checkpoint, load_position(checkpoint), epochs):  # the header only: no weights read
        return None
    return saved_summary(out / "summary.json")


def saved_summary(path: Path) -> dict[str, Any]:
    """A finished run's summary.json; ValueError naming it when missing or not a JSON object."""
    if not path.is_file():
        raise ValueError(f"{path} is missing, though the run finished training (last.safetensors): it stopped "
                         f"while writing its records; `vivace evaluate {path.parent}` scores it, --overwrite trains "
                         "it again")
    return read_json_object(path, " of metrics", "--overwrite trains the run again")


MODEL_FIELDS = {f.name for f in fields(ModelSpec)}


def resume_changes(out: Path, recipe: Recipe, device: torch.device, has_weights: bool) -> str | None:
    """What a `--resume` changes against `out`'s config.json, as one line (None: nothing); ValueError
    when it changes the model that the checkpoint's weights were made for (`has_weights`)."""
    config = out / "config.json"
    saved = resolve(load_recipe(config), device)  # as `recipe` is: runs saved by older versions hold `auto`s
    changed = [f.name for f in fields(Recipe) if getattr(saved, f.name) != getattr(recipe, f.name)]
    said = {name: f"{name} {getattr(saved, name)} -> {getattr(recipe, name)}" for name in changed}
    model = [said[name] for name in changed if name in MODEL_FIELDS]
    if model and has_weights:
        raise ValueError(f"{config}: --resume cannot change the model ({', '.join(model)}): the weights in "
                         "last.safetensors are for the saved one; resume without those flags, or train the new "
                         "model into another --out")
    return f"resume of {out} changes {', '.join(said.values())} (vs its config.json)" if changed else None


@dataclass(frozen=True)
class RunStart:
    """What a run's folder holds as the run starts in it: rank 0 reads it, every rank acts on it
    (under torchrun the other machines may not see the folder)."""

    resumes: bool  # --resume and a last checkpoint: training goes on from it
    fresh: bool  # no config.json yet: a failure before training leaves no run behind
    change: str | None  # what --resume changes against config.json, for a warning


def run_start(out: Path, recipe: Recipe, device: torch.device, resume: bool) -> RunStart:
    """Read `out` as a run starts in it; ValueError when a --resume changes the model of its weights."""
    resumes = resume and (out / "last.safetensors").is_file()
    has_config = (out / "config.json").is_file()
    change = resume_changes(out, recipe, device, has_weights=resumes) if resume and has_config else None
    return RunStart(resumes, fresh=not has_config, change=change)


def resume_learner(learn: Learner, checkpoint: Path, state: dict[str, Any], epochs: int | None) -> None:
    """Restore `learn` from the `state` of a run's last checkpoint, checked against this run first: its
    fields, its position within the epochs and batches, its classes. ValueError saying what differs (of
    the file `checkpoint`), never torch's dump."""
    require_fields(checkpoint, state, RESUME_FIELDS)
    if position_in_run(checkpoint, state["position"], epochs, len(learn.dls.train)):
        raise ValueError(finished_message(checkpoint.parent, epochs))
    check_classes(checkpoint, state.get("vocab"), learn.dls.vocab)
    try:
        restore_learner(learn, state)
    except RuntimeError as err:  # load_state_dict lists every tensor that differs (KBs): say the first
        raise ValueError(f"{checkpoint} does not fit the model this recipe builds ({first_problem(err)}): resume "
                         "with the recipe in config.json, or train into another --out") from None


def first_problem(err: Exception) -> str:
    """The first line of detail in a multi-line torch error, and how many more there are."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__
    more = f"; {len(lines) - 2} more" if len(lines) > 2 else ""
    return f"{detail if len(detail) <= 160 else detail[:157] + '...'}{more}"


def nothing_to_resume(out: Path) -> str:
    if (out / "config.json").is_file():  # stopped before its first checkpoint, e.g. while caching
        return f"nothing to resume in {out} (no last.safetensors yet): training its recipe (config.json) from the start"
    # e.g. the first start of an elastic torchrun job that always says --resume
    return f"nothing to resume in {out} (no last.safetensors): starting a new run"


def kept_checkpoint(out: Path) -> str:
    """Where a failed run's last good weights are, for its error message."""
    last = out / "last.safetensors"  # never written after a failure
    return f"the last good checkpoint is kept: {last}" if last.is_file() else "no checkpoint was written"


RESUMED_OPTIONS = ("runs", "threads", "workers", "checkpoint_every_min", "reuse_memory", "tensorboard")  # how, not what: config.json has the what


def resume_command(out: Path, options: TrainOptions) -> str:
    """The command that continues this run where it stopped, with the run settings it was given."""
    parts = ["vivace", "train", "--out", str(out), "--resume"]
    for name in RESUMED_OPTIONS:
        value, default = getattr(options, name), getattr(TrainOptions(), name)
        if value != default:
            flag = "--" + name.replace("_", "-")
            parts += [flag, str(value)] if not isinstance(value, bool) else [flag if value else f"--no-{flag[2:]}"]
    return shlex.join(parts)


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


def load_run_weights(run_dir: Path, weights: WeightsChoice = "final", keep_model_classes: bool = False,
                     **overrides: Any) -> tuple[Learner, SavedWeights]:
    """`load_run`, plus which weights were loaded (for output that says what it scored).

    final = the model at the end of training (with EMA, the average), as `train` reports it;
    best = the epoch with the best validation accuracy, chosen on the validation set (so its
    validation score is optimistic). `overrides`: recipe fields to change (the validation view).
    The classes are the model's, recorded in its checkpoint: data whose classes differ is refused,
    or with `keep_model_classes` (export: only the model is used) said in a warning.
    """
    if weights not in WEIGHT_FILES:
        raise ValueError(f"weights={weights!r} is not one of: {', '.join(WEIGHT_FILES)}")
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json): pass the --out of a `vivace train` run")
    recipe = replace(load_recipe(config), **overrides)
    recipe.validate()
    check_recorded_data(config, recipe.data)
    configure_process(threads=0, reuse_memory=True)  # train's defaults (2x for evaluation: runtime.py)
    checkpoint = run_dir / WEIGHT_FILES[weights]
    state = load_checkpoint(checkpoint)  # on the CPU: load_state_dict copies to the model's device
    # Quiet: the run's split was said when it trained (`learn.dls.source.split_note` has it).
    dls = build_dataloaders(recipe, progress=False)
    match_model_classes(checkpoint, state, dls, keep_model_classes)
    learn = build_learner(recipe, dls, run_dir)
    learn.model.load_state_dict(state.get("eval_model", state["model"]))  # EMA runs: the average
    position = state["position"]
    return learn, SavedWeights(weights, WEIGHT_FILES[weights], int(position["epoch"]), int(position["batch"]))


def check_recorded_data(config: Path, data: str) -> None:
    """The data folder a run's config.json names must still be there; FileNotFoundError naming the field."""
    if not data or data in DATASETS or Path(data).expanduser().exists():
        return
    # Runs saved before 2026-12-06 may record a path relative to where they were trained.
    relative = "" if Path(data).expanduser().is_absolute() else f" (relative to the current folder {Path.cwd()})"
    raise FileNotFoundError(f"{config}: data {data!r}{relative} no longer exists; move the folder back, or edit "
                            "the field data to where it is now")


def match_model_classes(checkpoint: Path, state: dict[str, Any], dls: DataLoaders, keep_model_classes: bool) -> None:
    """The data's classes must be the model's, as its checkpoint recorded them (since 2026-12-06).

    A renamed or added class folder would otherwise relabel every output: a cat called `aardvark`,
    an accuracy of 0. With `keep_model_classes` the model's classes and statistics replace the data's.
    """
    saved = state.get("vocab")
    if saved is None or list(saved) == list(dls.vocab):
        return
    change = class_change(saved, dls.vocab)
    if not keep_model_classes:
        raise ValueError(f"{checkpoint}: the model was trained on {len(saved)} classes, but its data "
                         f"{dls.source.root} now has others ({change}): restore the data as it was when the run "
                         "trained, or train again on the new classes")
    warnings.warn(f"{dls.source.root}: the data's classes differ from the model's ({change}); using the model's "
                  f"{len(saved)} classes, recorded in {checkpoint}")
    dls.vocab = [str(name) for name in saved]
    if "normalize" in state:  # statistics computed from the data would now be another data's
        norm = state["normalize"]
        dls.set_normalize(Normalize(norm["mean"], norm["std"]) if norm is not None else None)


def load_predictor(path: Path, device: str | None = None) -> tuple[Predictor, str]:
    """What `predict` runs: a bundle file, or a run folder (its export.vivace when it has one, else
    its final weights, rebuilt as `export` would); for a folder, a line saying which it took."""
    from .export import load  # lazy: export needs nothing of runs, runs need export only here
    path = Path(path)
    if not path.is_dir():
        return load(path, device=device), ""
    if (path / "export.vivace").is_file():
        return load(path / "export.vivace", device=device), f"bundle: {path / 'export.vivace'}"
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is a folder with neither a bundle (export.vivace) nor a run (config.json): "
                         f"name a bundle file, or the --out of a `vivace train` run")
    learn, weights = load_run_weights(path, "final", keep_model_classes=True)  # predicts the model's classes
    predictor = Predictor(learn.model, learn.dls.vocab, learn.dls.eval_view, device=device,
                          multi_label=learn.dls.multi_label, thresh=load_recipe(path / "config.json").thresh)
    return predictor, f"weights: {weights}"
