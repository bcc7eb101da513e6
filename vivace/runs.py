"""Run folders: checked before any heavy work, started (config.json, recipe.txt), replaced on
--overwrite, and reopened (`load_run`) for evaluate, export and report."""
from __future__ import annotations

import shlex
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .build import build_dataloaders, build_learner
from .checkpoint import WEIGHT_FILES, WeightsChoice, load_checkpoint
from .data import data_source
from .data.datasets import DATASETS
from .files import ensure_writable_folder
from .inference import Predictor
from .learner import Learner
from .models import ModelSpec, create_model
from .recipe import Recipe, TrainOptions, load_recipe
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


def load_run_weights(run_dir: Path, weights: WeightsChoice = "final",
                     **overrides: Any) -> tuple[Learner, SavedWeights]:
    """`load_run`, plus which weights were loaded (for output that says what it scored).

    final = the model at the end of training (with EMA, the average), as `train` reports it;
    best = the epoch with the best validation accuracy, chosen on the validation set (so its
    validation score is optimistic). `overrides`: recipe fields to change (the validation view).
    """
    if weights not in WEIGHT_FILES:
        raise ValueError(f"weights={weights!r} is not one of: {', '.join(WEIGHT_FILES)}")
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json): pass the --out of a `vivace train` run")
    recipe = replace(load_recipe(config), **overrides)
    recipe.validate()
    configure_process(threads=0, reuse_memory=True)  # train's defaults (2x for evaluation: runtime.py)
    # Quiet: the run's split was said when it trained (`learn.dls.source.split_note` has it).
    learn = build_learner(recipe, build_dataloaders(recipe, progress=False), run_dir)
    state = load_checkpoint(run_dir / WEIGHT_FILES[weights], learn.device)
    learn.model.load_state_dict(state.get("eval_model", state["model"]))  # EMA runs: the average
    position = state["position"]
    return learn, SavedWeights(weights, WEIGHT_FILES[weights], int(position["epoch"]), int(position["batch"]))


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
    learn, weights = load_run_weights(path, "final")
    predictor = Predictor(learn.model, learn.dls.vocab, learn.dls.eval_view, device=device,
                          multi_label=learn.dls.multi_label, thresh=load_recipe(path / "config.json").thresh)
    return predictor, f"weights: {weights}"
