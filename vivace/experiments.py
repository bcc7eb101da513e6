"""`vivace experiments chapter7`: the chapter's techniques trained one by one, compared in one table.

The rows of fastai book chapter 7 ("Training a State-of-the-Art Model"):

    baseline                      no input normalization
    + normalize                   ImageNet statistics; the reference the rows below add to
    + progressive resizing        the book's way: one-cycle at half size for half the epochs, then
                                  `learn.dls = <full-size data>` and `learn.fine_tune(...)`
    + TTA                         no training: `tta` (4 augmented passes, beta 0.25) on the model above
    + mixup                       normalize + Mixup(alpha=0.4), as the book's MixUp section
    + label smoothing             normalize + LabelSmoothingCrossEntropy(eps=0.1)
    + mixup + label smoothing     both, with 2x the epochs (they need longer training to pay off)

Mixup and label smoothing build on "+ normalize", not on progressive resizing, as the book's
sections do (each trains `xresnet50` with `fit_one_cycle(5, 3e-3)` on the normalized data).
The defaults suit the embedded dataset on 2 CPU cores (a couple of minutes in all): xresnet18 at
half width, 64 px crops from a 96 px cache, 8 epochs, batch size 32.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .build import build_dataloaders, build_learner
from .learner import Learner, TrainingFailed
from .recipe import Recipe, make_recipe, new_names
from .files import write_csv
from .records import write_json
from .runtime import configure_process
from .schedule import ScheduleSpec
from .tta import prob_metrics, tta

METRICS = ("accuracy", "nll", "ece")
FINE_TUNE_LR_DIV = 3.0  # the book: fit_one_cycle(4, 3e-3) at 128 px, then fine_tune(5, 1e-3) at 224


@dataclass(frozen=True)
class Step:
    """One row of the table: Recipe changes from the base, or TTA on the previous row's model."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    epochs_mult: int = 1          # epochs = base epochs * this
    progressive: bool = False     # the book's two-phase progressive resizing
    tta: bool = False             # no training: TTA on the previous row's model


CHAPTER7: tuple[Step, ...] = (
    Step("baseline", {"normalize": False}),
    Step("+ normalize"),
    Step("+ progressive resizing", progressive=True),
    Step("+ TTA", tta=True),
    Step("+ mixup", {"mixup_alpha": 0.4}),
    Step("+ label smoothing", {"label_smoothing": 0.1}),
    Step("+ mixup + label smoothing, 2x epochs", {"mixup_alpha": 0.4, "label_smoothing": 0.1}, epochs_mult=2),
)

# Small enough for the embedded dataset on 2 CPU cores; the CLI flags override each.
DEFAULTS: dict[str, Any] = dict(arch="xresnet18", widen=0.5, size_px=64, presize_px=96, epochs=8, batch_size=32,
                                lr=5e-3, normalize=True, label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0)


def slug(name: str) -> str:
    """A folder name for a row: '+ mixup + label smoothing, 2x epochs' -> 'mixup-label-smoothing-2x-epochs'."""
    words = "".join(c if c.isalnum() else " " for c in name.lower()).split()
    return "-".join(words)


def fit_progressive(learn: Learner, recipe: Recipe, workers: int = 0) -> None:
    """The book's progressive resizing: half size for half the epochs, then swap in full-size data.

    `fine_tune` runs without its warm phase: a from-scratch model has no frozen body (fastai's
    freeze is a no-op for it too), and this keeps the epoch budget equal to the other rows. It
    starts a fresh optimizer, as fastai's does (since 2026-12-06; before, the state carried over).
    """
    small_epochs = recipe.epochs // 2
    learn.fit_one_cycle(small_epochs, recipe.lr, pct_start=recipe.pct_start)
    learn.dls = build_dataloaders(recipe, workers=workers)  # same cache (same presize), crops at the full size
    learn.fine_tune(recipe.epochs - small_epochs, recipe.lr / FINE_TUNE_LR_DIV, freeze_epochs=0)


def train_step(step: Step, recipe: Recipe, out: Path, workers: int = 0) -> tuple[Learner, dict[str, float]]:
    """Train one row's recipe into `out`; returns the Learner and its final metrics and fit time."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", recipe.to_dict())  # `vivace evaluate` can load the run
    first = replace(recipe, size_px=recipe.size_px // 2) if step.progressive else recipe
    learn = build_learner(recipe, build_dataloaders(first, workers=workers), out)
    start = time.perf_counter()
    try:
        if step.progressive:
            fit_progressive(learn, recipe, workers)
        else:
            learn.fit_schedule(**recipe.kwargs(ScheduleSpec))
    except TrainingFailed as err:
        raise TrainingFailed(f"{step.name}: {err}") from None
    seconds = time.perf_counter() - start
    m = learn.state.last_metrics
    return learn, {"accuracy": m["accuracy"], "nll": m["nll"], "ece": m["calibration_error"], "seconds": seconds}


def tta_step(learn: Learner) -> dict[str, float]:
    """TTA on a trained model: its metrics and the time TTA took."""
    start = time.perf_counter()
    probs, targets = tta(learn)
    return {**prob_metrics(probs, targets), "seconds": time.perf_counter() - start}


def run_steps(base: Recipe, out: Path, runs: int = 1, steps: Sequence[Step] = CHAPTER7,
              workers: int = 0) -> list[dict[str, Any]]:
    """Every step for `runs` seeds; one result row per (run, step)."""
    rows: list[dict[str, Any]] = []
    for run in range(runs):
        seed = base.seed + run
        learn = None
        for step in steps:
            print(f"\n== {step.name} (run {run + 1}/{runs}, seed {seed}) ==", flush=True)
            if step.tta:
                if learn is None:
                    raise ValueError(f"step {step.name!r} applies TTA to the previous step's model: it cannot come first")
                result = tta_step(learn)
            else:
                recipe = replace(base, **step.overrides, seed=seed, epochs=base.epochs * step.epochs_mult)
                recipe.validate()
                learn, result = train_step(step, recipe, out / slug(step.name) / f"run{run}", workers)
            rows.append({"technique": step.name, "run": run, "seed": seed, **result})
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per technique, in first-seen order: runs, and mean and std (0 for one run) of each number."""
    names = list(dict.fromkeys(r["technique"] for r in rows))
    summary = []
    for name in names:
        group = [r for r in rows if r["technique"] == name]
        entry: dict[str, Any] = {"technique": name, "runs": len(group)}
        for key in (*METRICS, "seconds"):
            values = [float(r[key]) for r in group]
            entry[key] = statistics.mean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def format_table(summary: list[dict[str, Any]]) -> str:
    """The book-style comparison table (mean ± std when there were several runs)."""
    several = any(s["runs"] > 1 for s in summary)
    width = max(len("technique"), *(len(s["technique"]) for s in summary))

    def cell(s: dict[str, Any], key: str, digits: int) -> str:
        text = f"{s[key]:.{digits}f}"
        return f"{text} ± {s[key + '_std']:.{digits}f}" if several else text
    header = f"{'technique':<{width}}  {'accuracy':>15}  {'NLL':>15}  {'ECE':>15}  {'time/run (s)':>15}"
    lines = [header, "-" * len(header)]
    for s in summary:
        lines.append(f"{s['technique']:<{width}}  {cell(s, 'accuracy', 4):>15}  {cell(s, 'nll', 4):>15}  "
                     f"{cell(s, 'ece', 4):>15}  {cell(s, 'seconds', 1):>15}")
    return "\n".join(lines)


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    """results.csv: one row per technique and run (atomic, and safe to open in a spreadsheet)."""
    header = ["technique", "run", "seed", *METRICS, "seconds"]
    write_csv(path, header, [[round(r[k], 6) if isinstance(r[k], float) else r[k] for k in header] for r in rows])


def plot_results(summary: list[dict[str, Any]], path: Path) -> None:
    """Horizontal bars of accuracy (with std error bars) per technique, top row first."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe without a display
    names = [s["technique"] for s in summary]
    fig = Figure(figsize=(8, 0.5 * len(names) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    y = list(range(len(names)))[::-1]
    ax.barh(y, [s["accuracy"] for s in summary], xerr=[s["accuracy_std"] for s in summary], color="tab:blue")
    for yi, s in zip(y, summary):
        ax.text(s["accuracy"], yi, f" {s['accuracy']:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1.12)  # room for the value labels
    ax.set_xlabel("validation accuracy")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def chapter7(out: Path, runs: int = 1, steps: Sequence[Step] = CHAPTER7, workers: int = 0,
             **recipe_fields: Any) -> list[dict[str, Any]]:
    """Run the chapter's comparison into `out` (results.csv, results.png, table.md); returns the summary.

    `workers`: processes building the cache (0 = all cores); `recipe_fields` change `DEFAULTS`.
    """
    if runs < 1:
        raise ValueError(f"runs={runs} must be >= 1")
    base = make_recipe(**{**DEFAULTS, **new_names(recipe_fields)})  # validated before any heavy work
    if any(s.progressive for s in steps) and base.epochs < 2:
        raise ValueError(f"epochs={base.epochs}: progressive resizing needs >= 2 (half at half size, half at full)")
    configure_process(threads=0, reuse_memory=True)  # as `vivace train` by default
    # RunLogger plots after every fit: import matplotlib now, so that its first import (a second
    # or so) is not counted in the baseline's time.
    import matplotlib.figure  # noqa: F401
    out.mkdir(parents=True, exist_ok=True)
    rows = run_steps(base, out, runs, steps, workers)
    summary = summarize(rows)
    table = format_table(summary)
    write_results(rows, out / "results.csv")
    (out / "table.md").write_text(f"```\n{table}\n```\n")
    plot_results(summary, out / "results.png")
    print(f"\n{table}\n\nwrote {out / 'results.csv'}, {out / 'results.png'}")
    return summary
