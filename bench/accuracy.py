"""Accuracy runs of a preset on Imagenette, and their record in docs/benchmarks.json.

    python -m bench accuracy --data PATH --preset imagenette-128-5ep --runs 2 --record
    python -m bench accuracy --from-runs runs/a runs/b --record   # runs already trained
    python -m bench accuracy --from-runs runs/c --as-preset imagenette-128-5ep-noisy --record

Each run is `vivace train --preset NAME --seed 42+i` on the --data folder. Printed
per run: accuracy, training seconds (training + per-epoch evaluation, after the cache is built)
and minutes; then the mean. `--record` writes `<key>_accuracy_mean` and `<key>_runs`, where the
key names the data and the preset: `imagenette160_128_5ep` for `imagenette-128-5ep` on the
imagenette2-160 files, `imagenette_128_5ep` on the 224 px squares (the key every figure before
2026-12-05 has), `noisy5_128_5ep` for a run trained on noisy_imagenette.csv's `noisy_labels_5`
(`vivace train ... --csv noisy_imagenette.csv --label-col noisy_labels_5 --valid-col is_valid`). For the speedrun it also writes `<data>speedrun_minutes_to_85` (the mean minutes, if
every run reached 85 %) and, when it trained them, the machine's fp32 matmul peak measured just after.

    python -m bench accuracy --preset imagenette-speedrun --data imagenette2-160 --runs 2 \
        --reference ../shared/data/imagenette2-224 --record

`--reference DATA` also trains the speedrun as it was tuned on the 224 px squares (2026-12-04: presize
224, 12 epochs) once on DATA and records its minutes as `speedrun_reference_minutes`: this small
model's speed moves 2x from day to day, so the speedrun's minutes mean something only beside a
reference timed in the same session.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from vivace.recipe import TrainOptions, make_recipe, new_names, resolve
from vivace.runtime import autocast_dtype
from vivace.train import train

from .common import add_data_arg, data_folder, machine, make_parser, matmul_peak_gflops, record

SPEEDRUN = "imagenette-speedrun"
SPEEDRUN_TARGET = 0.85
# The speedrun preset as it stood on 2026-12-04, tuned on the 224 px squares: the time reference. Its
# model and length are pinned here, so a change of the preset does not move the reference.
SQUARES_SPEEDRUN = dict(arch="xresnet18", widen=0.5, stem_widen=1.0, presize_px=224, valid_size_px=160,
                        valid_crop=0.875, epochs=12, budget_s=0.0)


def trained_runs(preset: str, runs: int, data: str, out: Path) -> list[Path]:
    """Train `runs` seeds of the preset into out/run<i>; returns the run directories."""
    recipe = make_recipe(preset, data=data)
    dirs = [out / f"run{i}" for i in range(runs)]
    for i, run_dir in enumerate(dirs):
        train(replace(recipe, seed=recipe.seed + i), TrainOptions(preset=preset, out=str(run_dir)))
    return dirs


# Recipe fields that may differ from the preset's own values without changing what was trained.
FREE_FIELDS = ("data", "seed", "data_on_device", "labels", "fn_col", "label_col", "valid_col")


def check_is_preset(run_dir: Path, config: dict, preset: str, overrides: dict | None = None) -> None:
    """Refuse a run whose recipe is not its preset's plus `overrides` (a probe, say).

    config.json holds the recipe as it ran (resolved: `vivace.recipe.resolve`) or, in runs saved
    before 2026-12-06, as asked: either matches.
    """
    kept = {k: config[k] for k in FREE_FIELDS if k in config}
    recipe = make_recipe(preset, **{**kept, **(overrides or {})})
    asked, ran = recipe.to_dict(), resolve(recipe, torch.device("cpu")).to_dict()
    # Fields newer than the run's config.json take their defaults; run settings are not compared.
    differ = [k for k in asked if k in config and config[k] not in (asked[k], ran[k])]
    if differ:
        raise SystemExit(f"{run_dir} is not a plain {preset!r} run: "
                         + ", ".join(f"{k}={config[k]!r} (preset: {asked[k]!r})" for k in differ))


def read_run(run_dir: Path, overrides: dict | None = None, as_preset: str = "") -> dict:
    """A run directory's preset, accuracy and time (from config.json and summary.json). `as_preset`: count
    it as that preset's run, when its recipe is that preset's exactly (a preset named after the run)."""
    config = new_names(json.loads((run_dir / "config.json").read_text()))  # runs saved before the renames too
    summary = json.loads((run_dir / "summary.json").read_text())
    preset = as_preset or summary.get("preset") or config["preset"]  # runs before 2026-12-06: in config.json
    check_is_preset(run_dir, config, preset, overrides)
    return {"dir": str(run_dir), "preset": preset, "data": config.get("data", ""), "seed": summary["seed"],
            "label_col": config.get("label_col", ""),
            "accuracy": summary["accuracy"], "train_seconds": summary["train_seconds"],
            "valid_size": config.get("valid_size_px") or config["size_px"], "amp": config.get("amp", "auto")}


PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def run_precision(runs: list[dict]) -> str:
    """The precision the runs trained in, resolving their `amp` on this machine (where `record` says they ran)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return ", ".join(sorted({PRECISION_NAMES[autocast_dtype(device, r["amp"])] for r in runs}))


# Data folders (or names) whose figures get their own key prefix; anything else is "imagenette",
# the 224 px squares every figure before 2026-12-05 was taken on.
DATA_PREFIXES = {"imagenette2-160": "imagenette160", "imagenette-160": "imagenette160",
                 "imagewoof2-160": "imagewoof160", "imagewoof-160": "imagewoof160"}


def figure_key(preset: str, data: str, label_col: str = "") -> str:
    """The benchmarks.json key of `preset` trained on `data`: imagenette-128-5ep on imagenette2-160 ->
    imagenette160_128_5ep; with noisy_imagenette.csv's column noisy_labels_5 -> noisy5_128_5ep."""
    noisy = re.fullmatch(r"noisy_labels_(\d+)", label_col)
    prefix = f"noisy{noisy[1]}" if noisy else DATA_PREFIXES.get(Path(data.rstrip("/")).name, "imagenette")
    return preset.replace("-", "_").replace("imagenette", prefix, 1)


def summarize(runs: list[dict]) -> dict:
    """Mean accuracy, and for the speedrun the minutes of the runs that reached the target."""
    presets = {(r["preset"], figure_key(r["preset"], r["data"], r.get("label_col", ""))) for r in runs}
    if len(presets) != 1:
        raise SystemExit(f"runs of different presets or data can't be averaged: {sorted(presets)}")
    preset, key = presets.pop()
    out = {f"{key}_accuracy_mean": round(statistics.mean(r["accuracy"] for r in runs), 4),
           f"{key}_runs": [round(r["accuracy"], 4) for r in runs]}
    if preset == SPEEDRUN:
        reached = [r["train_seconds"] / 60 for r in runs if r["accuracy"] >= SPEEDRUN_TARGET]
        # None unless every run reached the target: a mean over the lucky seeds would flatter.
        minutes = round(statistics.mean(reached), 2) if len(reached) == len(runs) else None
        out[key.replace("imagenette_speedrun", "speedrun") + "_minutes_to_85"] = minutes
    return out


def train_reference(data: Path, run_dir: Path) -> Path:
    """The speedrun of 2026-12-04 (the squares' recipe, 12 epochs) trained once on `data` into `run_dir`."""
    train(make_recipe(SPEEDRUN, data=str(data), **SQUARES_SPEEDRUN), TrainOptions(preset=SPEEDRUN, out=str(run_dir)))
    return run_dir


def reference_minutes(data: Path | None, run_dir: Path | None, out: Path) -> dict:
    """Train (or read) the squares' speedrun once; its accuracy and minutes, to time the speedrun against."""
    if run_dir is None:
        run_dir = train_reference(data, out / "speedrun-reference")
    run = read_run(run_dir, SQUARES_SPEEDRUN)
    print(f"{run['dir']}: reference (speedrun of 2026-12-04 on {run['data']}): accuracy {run['accuracy']:.4f} "
          f"in {run['train_seconds'] / 60:.1f} min")
    return {"speedrun_reference_accuracy": round(run["accuracy"], 4),
            "speedrun_reference_minutes": round(run["train_seconds"] / 60, 2)}


def main(argv: list[str]) -> None:
    p = make_parser("accuracy", __doc__)
    p.add_argument("--preset", default="imagenette-128-5ep")
    p.add_argument("--runs", type=int, default=2)
    add_data_arg(p)
    p.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    p.add_argument("--from-runs", nargs="+", type=Path, default=None,
                   help="report (and record) runs already trained instead of training new ones")
    p.add_argument("--as-preset", default="", metavar="NAME",
                   help="with --from-runs: count the runs as NAME's, checked field by field (a preset named "
                        "after the runs were trained with flags)")
    p.add_argument("--reference", type=Path, default=None, metavar="DATA",
                   help="also time the speedrun of 2026-12-04 (tuned on the 224 px squares) once on DATA")
    p.add_argument("--reference-run", type=Path, default=None, metavar="DIR",
                   help="a reference run already trained, instead of --reference")
    p.add_argument("--record", action="store_true", help="write the figures to docs/benchmarks.json")
    args = p.parse_args(argv)
    if args.from_runs is None:
        args.data = data_folder(p.prog, args.data)  # only training needs the data
    print(machine())
    dirs = args.from_runs or trained_runs(args.preset, args.runs, str(args.data), args.out / args.preset)
    runs = [read_run(d, as_preset=args.as_preset) for d in dirs]
    for r in runs:
        print(f"{r['dir']}: {r['preset']} seed {r['seed']}: accuracy {r['accuracy']:.4f} "
              f"(validated at {r['valid_size']} px) in {r['train_seconds']:.0f} s = {r['train_seconds'] / 60:.1f} min")
    figures = summarize(runs)
    if args.reference or args.reference_run:
        reference = args.reference and data_folder(p.prog, args.reference)
        figures.update(reference_minutes(reference, args.reference_run, args.out))
    peak = {}
    # Minutes compare across machines only beside the peak, measured right after the runs it explains.
    if args.from_runs is None and any(k.endswith("_minutes_to_85") and v is not None for k, v in figures.items()):
        peak["speedrun_matmul_peak_gflops"] = round(matmul_peak_gflops(), 1)
    print(json.dumps({**figures, **peak}))
    if args.record:
        record(precision=run_precision(runs), **figures)
        if peak:
            record(precision="fp32", **peak)  # the fp32 peak, whatever precision the runs trained in


if __name__ == "__main__":
    main(sys.argv[1:])
