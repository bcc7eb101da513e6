"""Transfer, as the chapter frames it: Imagenette split by class into two halves of five; a source model trained on the first, then the second from scratch vs --init + fine_tune, with and without progressive resizing.

The halves are label tables over the same image folder (`--csv`, written to OUT/halves), so the
images, the split and the cache are Imagenette's own. Every run on the second half has the
same recipe, epochs and seed; the arms differ only in where they start and how they train:

  scratch                   random weights, one-cycle
  fine_tune                 --init SOURCE, fastai's fine_tune: 1 frozen epoch (none in a 1-epoch run),
                            then the whole model with discriminative rates
  fine_tune_progressive     the same with progressive resizing (half size -> full)

It also times loading xresnet50's weights into a fresh model (the cost --init adds to a start).
Finished runs in OUT are read, not trained again.

  python -m bench transfer --data ../shared/data/imagenette2-160 --epochs 1 3 5 --record
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import add_data_arg, data_folder, machine, make_parser, record
from vivace.data.sources import make_source
from vivace.export import export_learner
from vivace.models import create_model
from vivace.recipe import Recipe, TrainOptions, make_recipe
from vivace.runtime import autocast_dtype
from vivace.train import train
from vivace.transfer import start_from

ARMS = ("scratch", "fine_tune", "fine_tune_progressive")


def write_halves(data: Path, out: Path) -> tuple[Path, Path]:
    """Two label tables: the first half of the classes (sorted by name) and the second."""
    source = make_source(data)
    half = len(source.vocab) // 2
    tables = []
    for name, classes in (("first", source.vocab[:half]), ("second", source.vocab[half:])):
        rows = ["path,label,is_valid"]
        for files, labels, is_valid in ((source.train_files, source.train_labels, False),
                                        (source.valid_files, source.valid_labels, True)):
            rows += [f"{f.relative_to(data).as_posix()},{source.vocab[y]},{is_valid}"
                     for f, y in zip(files, labels) if source.vocab[y] in classes]
        path = out / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(rows) + "\n")
        tables.append(path)
    return tables[0], tables[1]


def arm_recipe(base: Recipe, arm: str, epochs: int, source: Path) -> Recipe:
    """The recipe of one arm at `epochs`: the base with its start and schedule."""
    if arm == "scratch":
        return replace(base, epochs=epochs, progressive=0.0)
    return replace(base, epochs=epochs, init=str(source), schedule="fine_tune", freeze_epochs=min(1, epochs - 1),
                   progressive=0.5 if arm == "fine_tune_progressive" else 0.0)


def trained(recipe: Recipe, out: Path) -> dict[str, Any]:
    """The summary of the run in `out`, training it first unless it finished before."""
    summary = out / "summary.json"
    if not summary.is_file():
        train(recipe, TrainOptions(out=str(out), overwrite=out.exists()))
    return json.loads(summary.read_text())


def init_seconds(arch: str, out: Path) -> float:
    """Seconds `start_from` takes to load a bundle of `arch` (10 classes) into a fresh model: the best of 3."""
    from types import SimpleNamespace

    from vivace.data.eval_view import EvalView
    from vivace.normalize import Normalize, imagenet_stats
    model = create_model(arch, n_out=10)
    view = EvalView(128, 1.0, False, 160, 1.0, Normalize(*imagenet_stats))
    vocab = [f"c{i}" for i in range(10)]
    dls = SimpleNamespace(vocab=vocab, eval_view=view, multi_label=False)
    bundle = export_learner(SimpleNamespace(model=model, dls=dls), out / f"{arch}.vivace")
    times = []
    for _ in range(3):
        fresh = create_model(arch, n_out=10)
        start = time.perf_counter()
        start_from(fresh, str(bundle), "final", vocab)
        times.append(time.perf_counter() - start)
    return min(times)


def table(results: dict[str, dict[int, float]], epochs: list[int]) -> str:
    lines = ["| second half | " + " | ".join(f"{e} epoch{'s' * (e > 1)}" for e in epochs) + " |",
             "|---|" + "---|" * len(epochs)]
    for arm in ARMS:
        lines.append(f"| {arm} | " + " | ".join(f"{results[arm][e] * 100:.2f} %" for e in epochs) + " |")
    return "\n".join(lines)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set size_px=16 arch=xresnet18`: values read as JSON where they parse, else as text."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str]) -> None:
    p = make_parser("transfer", __doc__)
    add_data_arg(p)
    p.add_argument("--preset", default="imagenette-speedrun", help="the recipe of every run (default: the speedrun's)")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 5], help="epochs of the runs on the second half")
    p.add_argument("--source-epochs", type=int, default=5, help="epochs of the source model on the first half")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="recipe fields to change (all runs)")
    p.add_argument("--init-arch", default="xresnet50", help="the model whose weight loading is timed")
    p.add_argument("--out", type=Path, default=Path("runs/transfer"))
    p.add_argument("--record", action="store_true", help="write the figures to docs/benchmarks.json")
    args = p.parse_args(argv)
    data = data_folder(p.prog, args.data).resolve()
    print(machine())
    load_s = init_seconds(args.init_arch, args.out)
    print(f"loading {args.init_arch}'s weights (start_from a bundle): {load_s:.2f} s")
    first, second = write_halves(data, args.out / "halves")
    base = make_recipe(args.preset, data=str(data), labels=str(first), valid_col="is_valid", **parse_overrides(args.set))
    source_dir = args.out / "source"
    source = trained(replace(base, epochs=args.source_epochs), source_dir)
    print(f"source: {args.preset}, {args.source_epochs} epochs on the first half: accuracy {source['accuracy']:.4f}")
    results: dict[str, dict[int, float]] = {arm: {} for arm in ARMS}
    for epochs in args.epochs:
        for arm in ARMS:
            recipe = arm_recipe(replace(base, labels=str(second)), arm, epochs, source_dir.resolve())
            summary = trained(recipe, args.out / f"{arm}-{epochs}ep")
            results[arm][epochs] = summary["accuracy"]
            print(f"{arm}, {epochs} epochs: accuracy {summary['accuracy']:.4f} in {summary['train_seconds']:.0f} s",
                  flush=True)
    print(table(results, args.epochs))
    figures = {f"transfer_{arm}_{e}ep": round(results[arm][e], 4) for arm in ARMS for e in args.epochs}
    figures.update(transfer_source_accuracy=round(source["accuracy"], 4),
                   transfer_init_seconds_xresnet50=round(load_s, 3))
    print(json.dumps(figures))
    if args.record:
        precision = "fp32" if autocast_dtype(torch.device("cpu"), base.amp) is None else "bf16"
        record(precision=None if torch.cuda.is_available() else precision, notes={
            "transfer_fine_tune_3ep": f"{args.preset} on imagenette's second five classes, seed {base.seed}; "
                                      f"source: {args.source_epochs} epochs on the first five"
                                      + (f"; --set {' '.join(args.set)}" if args.set else "") + " (bench/transfer.py)"},
            **figures)


if __name__ == "__main__":
    main(sys.argv[1:])
