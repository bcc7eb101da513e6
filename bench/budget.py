"""Budgeted runs against the clock: accuracy per budget, the end against the deadline, the fixed run beside.

    python -m bench budget --data ../shared/data/imagenette2-160 --budgets 5m 10m 20m --seeds 42 43 \
        --fixed --slow 10m --record
    python -m bench budget --from-runs runs/budget --record      # the runs already trained there

For each budget and seed: `vivace train --data DATA --budget B --seed S`, vivace choosing the model
(`vivace.choose`), into OUT/budget-<B>-seed<S>. `--fixed`: beside each budget (its first seed), the
speedrun preset for the most whole epochs that end within the budget (first as many as the budgeted
run trained, one fewer while it runs over), into OUT/fixed-<B>-<N>ep: the fixed recipe that fits.
`--slow B`: the budget B once more with one thread (`--threads 1`), into OUT/slow-<B>: a slower
machine must end on time too, less accurate, not late. `--lr LR`: those runs at peak lr LR instead
of the speedrun's 0.2 (tuned on Imagenette): toy data, with one small batch an epoch, can diverge
at 0.2.

Printed: one line per run (accuracy, seconds against the budget, epochs, model). `--record` writes
`budget_curve` (budget_s, seed, accuracy, seconds, late_s, epochs, arch, machine), `budget_fixed`,
`budget_slow` to docs/benchmarks.json and the plot of accuracy against budget to docs/budget_curve.png.

    python -m bench budget --data ../shared/data/imagenette2-160 --seeds 42 43 \
        --speedrun ../shared/data/imagenette2-224 --budgets --record

`--speedrun REFDATA`: the speedrun target (85 % on DATA within 0.8x the reference's time). It first
trains the reference, the speedrun of 2026-12-04 on the 224 px squares (`bench accuracy
--reference`), into OUT/reference-squares, then each seed to a budget of 0.8x the reference's
minutes into OUT/speedrun-seed<S>; `budget_speedrun` keeps both and whether every seed reached 85 %.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from vivace.budget import format_duration, parse_duration
from vivace.recipe import Recipe, TrainOptions, make_recipe
from vivace.train import train

from .accuracy import SPEEDRUN_TARGET, run_precision, train_reference
from .common import REPO, add_data_arg, cpu_name, data_folder, machine, make_parser, record

FIXED_PRESET = "imagenette-speedrun"
SPEEDRUN_SHARE = 0.8  # of the reference's time: the speedrun target's budget
PLOT = REPO / "docs" / "budget_curve.png"


def budget_name(seconds: float) -> str:
    """A budget in a folder name: 300 -> 5m, 90 -> 90s."""
    return f"{seconds / 60:g}m" if seconds % 60 == 0 else f"{seconds:g}s"


def speedrun_recipe(data: str, lr: float = 0.0, **fields) -> Recipe:
    """The speedrun preset on `data` with `fields`, at its own peak lr unless `lr` is given."""
    return make_recipe(FIXED_PRESET, data=data, **fields, **({"lr": lr} if lr else {}))


def budgeted_run(data: str, budget_s: float, seed: int, out: Path, threads: int = 0, lr: float = 0.0) -> Path:
    """`vivace train --data DATA --budget B --seed S` (the model chosen for the budget) into `out`."""
    recipe = speedrun_recipe(data, lr, budget_s=budget_s, seed=seed)
    train(recipe, TrainOptions(preset=FIXED_PRESET, choose=True, out=str(out), threads=threads))
    return out


def fixed_run(data: str, epochs: int, seed: int, out: Path, lr: float = 0.0) -> Path:
    """The speedrun preset for `epochs` epochs, trained as it is: no budget."""
    train(speedrun_recipe(data, lr, epochs=epochs, seed=seed), TrainOptions(preset=FIXED_PRESET, out=str(out)))
    return out


def fitting_fixed_run(data: str, budget_s: float, budgeted_epochs: float, seed: int, out: Path,
                      lr: float = 0.0) -> Path:
    """The speedrun for the most whole epochs that end within `budget_s`: first as many as the budgeted run
    trained, then one fewer while it runs over. A budget's time-based schedule spends longer at the small
    progressive sizes than an epoch-based one, so its epochs are faster on average than a fixed run's."""
    epochs = max(math.floor(budgeted_epochs), 1)
    while True:
        run_dir = fixed_run(data, epochs, seed, out / f"fixed-{budget_name(budget_s)}-{epochs}ep", lr)
        if read_run(run_dir)["seconds"] <= budget_s or epochs == 1:
            return run_dir
        epochs -= 1


def speedrun_runs(data: str, reference_data: Path, seeds: list[int], out: Path) -> None:
    """The reference timed on `reference_data`, then each seed to 0.8x its time on `data`, side by side."""
    reference = read_run(train_reference(reference_data, out / "reference-squares"))
    budget = round(SPEEDRUN_SHARE * reference["seconds"])
    print(f"reference: {format_duration(reference['seconds'])}; the speedrun's budget: {format_duration(budget)}")
    for seed in seeds:
        budgeted_run(data, budget, seed, out / f"speedrun-seed{seed}")


def read_run(run_dir: Path) -> dict:
    """A run folder's budget (0: a fixed run), accuracy, seconds against it, epochs and model."""
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    budget_s = config.get("budget_s", 0.0)
    return {"dir": str(run_dir), "kind": run_dir.name.split("-")[0], "budget_s": budget_s, "seed": summary["seed"],
            "accuracy": round(summary["accuracy"], 4),
            "seconds": summary.get("budget_used_s", summary["train_seconds"]),
            "late_s": summary.get("late_s"), "epochs": summary.get("epochs_trained", summary["epochs"]),
            "arch": f"{config['arch']} x{config['widen']:g}" + (f", stem x{config['stem_widen']:g}"
                                                                  if config.get("stem_widen", 1.0) != 1.0 else "")}


def describe_run(run: dict) -> str:
    against = (f"ended {format_duration(run['seconds'])} of {format_duration(run['budget_s'])} "
               f"({run['late_s']:+.1f} s)" if run["budget_s"] else f"took {format_duration(run['seconds'])}")
    return (f"{run['dir']}: {run['kind']} seed {run['seed']}: accuracy {run['accuracy']:.4f}, {against}, "
            f"{run['epochs']:g} epochs of {run['arch']}")


def figure_row(run: dict, where: str) -> dict:
    """One run as benchmarks.json keeps it."""
    return {"budget_s": run["budget_s"], "seed": run["seed"], "accuracy": run["accuracy"],
            "seconds": round(run["seconds"], 1), "late_s": run["late_s"], "epochs": run["epochs"],
            "arch": run["arch"], "machine": where}


def figures(runs: list[dict], where: str) -> dict:
    """The benchmarks.json figures of the runs: budgeted, fixed beside them, and the slow-machine check."""
    out = {"budget_curve": [figure_row(r, where) for r in runs if r["kind"] == "budget"]}
    fixed = []
    for run in (r for r in runs if r["kind"] == "fixed"):
        # A fixed run is named for the budget it stands beside (fixed-5m-4ep); `fits`: it ended within it.
        budget_s = parse_duration(Path(run["dir"]).name.split("-")[1])
        fixed.append(dict(figure_row(run, where), budget_s=budget_s, fits=run["seconds"] <= budget_s))
    if fixed:
        out["budget_fixed"] = fixed
    slow = [figure_row(r, where) for r in runs if r["kind"] == "slow"]
    if slow:
        out["budget_slow"] = slow
    reference = [r for r in runs if r["kind"] == "reference"]
    speedrun = [figure_row(r, where) for r in runs if r["kind"] == "speedrun"]
    if reference and speedrun:
        out["budget_speedrun"] = speedrun_figure(reference[0], speedrun)
    return out


def speedrun_figure(reference: dict, runs: list[dict]) -> dict:
    """The speedrun target by budget: the reference's minutes, the budget they allow, each seed's
    accuracy in it, and whether every seed reached the target (a mean over lucky seeds would flatter)."""
    return {"reference_minutes": round(reference["seconds"] / 60, 2), "reference_accuracy": reference["accuracy"],
            "budget_s": runs[0]["budget_s"], "runs": runs,
            "accuracy_mean": round(statistics.mean(r["accuracy"] for r in runs), 4),
            "met": all(r["accuracy"] >= SPEEDRUN_TARGET and r["late_s"] <= 0 for r in runs)}


def plot(curve: list[dict], fixed: list[dict], path: Path) -> list[str]:
    """Accuracy against budget: each model's budgeted runs and their mean, and the fixed runs beside them.
    Returns the legend's labels."""
    from vivace.figures import Figure
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    models = sorted({r.get("arch", "") for r in curve}, key=len)
    for i, model in enumerate(models):
        runs = [r for r in curve if r.get("arch", "") == model]
        budgets = sorted({r["budget_s"] for r in runs})
        means = [statistics.mean(r["accuracy"] for r in runs if r["budget_s"] == b) for b in budgets]
        color = "C0" if i == 0 else f"C{i + 1}"  # C1 is the fixed runs'
        ax.plot([b / 60 for b in budgets], means, "-o", color=color,
                label=f"--budget, {model} (mean of seeds)" if model else "--budget (mean of seeds)")
        ax.scatter([r["budget_s"] / 60 for r in runs], [r["accuracy"] for r in runs], s=12, color=color, alpha=0.5)
    if fixed:
        ax.scatter([r["seconds"] / 60 for r in fixed], [r["accuracy"] for r in fixed], marker="s", color="C1",
                   label=f"{FIXED_PRESET}, whole epochs (at its own time)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("accuracy, imagenette2-160")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")  # the points rise to the upper right
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return [text.get_text() for text in ax.get_legend().get_texts()]


def main(argv: list[str]) -> None:
    p = make_parser("budget", __doc__)
    add_data_arg(p)
    p.add_argument("--budgets", nargs="*", default=["5m", "10m", "20m"], help="durations: 90s, 5m, 1h")
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    p.add_argument("--fixed", action="store_true", help="beside each budget, the speedrun for the epochs it trained")
    p.add_argument("--slow", default="", metavar="BUDGET", help="that budget once more with --threads 1")
    p.add_argument("--speedrun", type=Path, default=None, metavar="REFDATA",
                   help="time the reference speedrun on REFDATA, then each seed to 0.8x its time")
    p.add_argument("--lr", type=float, default=0.0,
                   help="the peak learning rate of the budgeted, fixed and slow runs; 0 = the speedrun's (0.2, "
                        "tuned on Imagenette: toy data may want less)")
    p.add_argument("--out", type=Path, default=Path("runs/budget"))
    p.add_argument("--from-runs", type=Path, default=None, metavar="DIR",
                   help="report (and record) the runs already trained in DIR instead of training")
    p.add_argument("--record", action="store_true", help="write the figures and the plot to docs/")
    p.add_argument("--plot", type=Path, default=PLOT)
    args = p.parse_args(argv)
    print(machine())
    if args.from_runs is None:
        data = str(data_folder(p.prog, args.data))
        for budget in map(parse_duration, args.budgets):
            dirs = [budgeted_run(data, budget, seed, args.out / f"budget-{budget_name(budget)}-seed{seed}",
                                 lr=args.lr) for seed in args.seeds]
            if args.fixed:
                fitting_fixed_run(data, budget, read_run(dirs[0])["epochs"], args.seeds[0], args.out, args.lr)
        if args.slow:
            budget = parse_duration(args.slow)
            budgeted_run(data, budget, args.seeds[0], args.out / f"slow-{budget_name(budget)}", threads=1,
                         lr=args.lr)
        if args.speedrun:
            speedrun_runs(data, data_folder(p.prog, args.speedrun), args.seeds, args.out)
    folder = args.from_runs or args.out
    runs = [read_run(d) for d in sorted(folder.iterdir()) if (d / "summary.json").is_file()]
    for run in runs:
        print(describe_run(run))
    found = figures(runs, cpu_name())  # the runs' machine: their threads are their own (the slow check ran on 1)
    print(json.dumps(found))
    if args.record:
        record(precision=run_precision([{"amp": "auto"}]), **found)  # as the speedrun preset trains here
        plot(found["budget_curve"], found.get("budget_fixed", []), args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main(sys.argv[1:])
