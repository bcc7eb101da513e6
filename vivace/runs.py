"""Run folders: checked before any heavy work, started (config.json, recipe.txt), replaced on
--overwrite, and reopened (`load_run`) for evaluate, export and report."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .build import build_dataloaders, build_learner
from .checkpoint import WEIGHT_FILES, WeightsChoice, load_checkpoint
from .data import DataLoaders, data_source
from .data.datasets import DATASETS
from .files import ensure_writable_folder
from .learner import Learner
from .models import ModelSpec, create_model
from .normalize import Normalize
from .recipe import Recipe, load_recipe
from .records import write_json
from .runtime import configure_process
from .transfer import check_fits

# The files that make a folder a run: replacing them loses the run, keeping some mixes two runs.
RUN_RECORDS = ("config.json", "recipe.txt", "log.csv", "summary.json", "last.safetensors", "best.safetensors")


def default_out() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


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
        raise ValueError(f"--out {out} already holds a run ({names}): pass --resume to continue it, "
                         f"--overwrite to replace it, or choose another --out")


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


def nothing_to_resume(out: Path) -> str:
    if (out / "config.json").is_file():  # stopped before its first checkpoint, e.g. while caching
        return f"nothing to resume in {out} (no last.safetensors yet): training its recipe (config.json) from the start"
    # e.g. the first start of an elastic torchrun job that always says --resume
    return f"nothing to resume in {out} (no last.safetensors): starting a new run"


def kept_checkpoint(out: Path) -> str:
    """Where a failed run's last good weights are, for its error message."""
    last = out / "last.safetensors"  # never written after a failure
    return f"the last good checkpoint is kept: {last}" if last.is_file() else "no checkpoint was written"


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
    check_classes(checkpoint, state, dls, keep_model_classes)
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


def check_classes(checkpoint: Path, state: dict[str, Any], dls: DataLoaders, keep_model_classes: bool) -> None:
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


def class_change(model_vocab: list[str], data_vocab: list[str]) -> str:
    """How the data's classes differ from the model's, in a few words."""
    gone = [name for name in model_vocab if name not in data_vocab]
    new = [name for name in data_vocab if name not in model_vocab]
    if not gone and not new:
        return "the same names in another order"
    parts = [f"not in the data: {_few(gone)}" if gone else "", f"new: {_few(new)}" if new else ""]
    return "; ".join(part for part in parts if part)


def _few(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
