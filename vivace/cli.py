"""`vivace` command line: each `train` flag is a field of `Recipe` (what is trained) or of
`TrainOptions` (how the run is carried out)."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from .distributed import init_distributed, main_answer, rank, world_size
from .experiments import DEFAULTS as EXPERIMENT_DEFAULTS
from .files import check_new_file, ensure_writable_folder, printable
from .flags import add_flags
from .options import (DownloadOptions, EvaluateOptions, ExperimentOptions, ExportOptions, LrFindOptions,
                      PredictOptions, RunOptions, ShowOptions)
from .recipe import PRESETS, Recipe, TrainOptions, describe, load_recipe, make_recipe, resolve
from .runtime import reuse_freed_memory

DEFAULT_PRESET = "quick"
BUDGET_BASE = "imagenette-speedrun"  # the recipe whose model and sizes a budget chooses (vivace.choose)
INTERRUPTED = 130  # the shell's exit status for a process ended by Ctrl-C (128 + SIGINT)


def add_recipe_flags(parser: argparse.ArgumentParser, names: Sequence[str] = (),
                     defaults: dict[str, Any] | None = None) -> None:
    """One flag per Recipe field (or per field in `names`). Unset flags stay None so presets (or the
    command) can fill them; `defaults` are the values a command other than train fills in."""
    add_flags(parser, Recipe, names, defaults, unset_is_none=True)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The TrainOptions fields this command has flags for (the others keep their defaults)."""
    return TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)
                           if hasattr(args, f.name)})


def recipe_from_args(args: argparse.Namespace, options: TrainOptions) -> tuple[Recipe, TrainOptions]:
    """Preset (or, with --resume, the run's saved config), then the flags given explicitly; the
    options say which preset that was (with neither --data nor --preset: the embedded dataset's quick job)."""
    from .runs import check_recorded_data, saved_config
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    saved = saved_config(Path(options.out), options.runs) if options.resume and options.out else None
    if saved is not None:  # with --runs N, run<i>'s config, whose seed is the first run's + i
        config, index = saved
        recipe = load_recipe(config)
        if "data" not in given:  # the data it names has moved: say so of config.json, not of a --data never given
            check_recorded_data(config, recipe.data)
        return make_recipe(**{**recipe.to_dict(), "seed": recipe.seed - index, **given}), options
    if chooses_for_budget(given, options):
        return (make_recipe(BUDGET_BASE, **given),
                dataclasses.replace(options, preset=BUDGET_BASE, choose=True))
    preset = options.preset or ("" if given.get("data") else DEFAULT_PRESET)
    return make_recipe(preset, **given), dataclasses.replace(options, preset=preset)


def chooses_for_budget(given: dict[str, Any], options: TrainOptions) -> bool:
    """--data with --budget, and no --preset and no model, size or epoch flag: vivace chooses them (vivace.choose)."""
    from .choose import CHOICE_OFF_FIELDS
    return ("budget_s" in given and "data" in given and not options.preset and not options.resume
            and not set(given) & set(CHOICE_OFF_FIELDS))


def print_recipe(recipe: Recipe, options: TrainOptions) -> None:
    """The recipe resolved for this machine's device (and WORLD_SIZE under torchrun), as it would run."""
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(describe(recipe, resolve(recipe, device), device, options.preset, world_size()), end="")


def cmd_train(args: argparse.Namespace) -> int:
    from .runs import default_out
    from .train import TrainingFailed, TrainingInterrupted, train
    options = options_from_args(args)
    options.validate()
    try:
        if options.resume:  # under torchrun only rank 0's machine may hold the run's config.json
            init_distributed(options.dist_timeout_s)
        recipe, options = main_answer(lambda: recipe_from_args(args, options))
        if options.print_recipe:
            print_recipe(recipe, options)
            return 0
        if not options.out:  # named here, so the end can say where the run is
            options = dataclasses.replace(options, out=str(default_out()))
        result = train(recipe, options)
    except TrainingFailed as err:
        print(f"vivace train: error: {printable(err)}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:  # the first Ctrl-C: saved at its batch
        print(f"{_off_the_echoed_line()}vivace train: {err}", file=sys.stderr)
        return INTERRUPTED
    except RuntimeError as err:
        if world_size() == 1:
            raise
        # gloo/nccl say only what this rank saw ("Timed out waiting 5000ms ..."): name the cause.
        print(f"vivace train: error: rank {rank()}: {printable(err)} (if another rank crashed or stalled, its own log "
              f"says why; a stalled rank is detected after --dist-timeout-s seconds)", file=sys.stderr)
        return 1
    if rank() == 0:
        _print_result(result)
        print(next_steps(Path(options.out), options.runs))
    return 0


def next_steps(out: Path, runs: int) -> str:
    """Where the run is and the commands that use it, its folder filled in."""
    run = out / "run0" if runs > 1 else out  # several runs: one folder each, the first as the example
    folder = shlex.quote(str(run))
    where = f"runs: {out}/run0 ... run{runs - 1}" if runs > 1 else f"run: {out}"
    return "\n".join([f"{where}  (report: {run / 'report.html'})", "next:",
                      f"  vivace report {folder}            # rewrite the report",
                      f"  vivace export {folder}            # one bundle file: {run / 'export.vivace'}",
                      f"  vivace predict {folder} IMAGE...  # classify images (files or folders)"])


def _off_the_echoed_line() -> str:
    """A newline in a terminal, which echoed ^C where the cursor was; nothing in a pipe or file."""
    return "\n" if sys.stderr.isatty() else ""


def _print_result(result: dict[str, Any]) -> None:
    if "accuracy" in result and isinstance(result["accuracy"], dict):
        for key, v in result.items():
            print(f"{key}: {v['mean']:.4f} ± {v['std']:.4f}")
    else:
        metric = "accuracy" if "accuracy" in result else "accuracy_multi"  # several labels per image
        print(f"final {metric}: {result[metric]:.4f}  (valid_loss {result['valid_loss']:.4f})")


def cmd_download(args: argparse.Namespace) -> int:
    from .data.datasets import ensure_dataset
    print(ensure_dataset(args.name))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .runs import load_run_weights
    from .data.names import display_names
    from .tta import TTA_KINDS, evaluate, format_evaluation, format_thresholds, tta_probs
    overrides = {k: v for k, v in (("valid_crop", args.crop), ("valid_view", args.view)) if v is not None}
    learn, weights = load_run_weights(Path(args.run), args.weights, **overrides)
    thresh = load_recipe(Path(args.run) / "config.json").thresh  # several labels per image: the run's
    print(f"weights: {weights}\n{learn.dls.source.split_note}", flush=True)
    plan = [("none", None)]  # plain, at the size the run was trained at
    if args.size_px is not None:
        plan.append(("none", args.size_px))
    kinds = TTA_KINDS[1:] if args.tta == "all" else [args.tta] if args.tta != "none" else []
    plan += [(kind, args.size_px) for kind in kinds]
    evaluate(learn, "none")  # untimed warm-up (allocations, kernel choice): every timed row starts warm
    print(format_evaluation([evaluate(learn, kind, size=size, thresh=thresh) for kind, size in plan]))
    if learn.dls.multi_label:  # which classes it finds, and how the scores move with the threshold
        probs, targets = tta_probs(learn, "none")
        names = [printable(name) for name in display_names(learn.dls.vocab)]
        print(f"\n{format_thresholds(probs, targets, names, thresh)}")
    return 0


EXPERIMENT_FIELDS = ("data", "valid_name", "arch", "widen", "size_px", "presize_px", "epochs", "batch_size", "lr",
                     "seed")
SHOW_FIELDS = ("data", "valid_name", "size_px", "presize_px", "seed")
SHOW_DEFAULTS = dict(size_px=128, presize_px=160)


def given_fields(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The Recipe flags among `names` given on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_experiments(args: argparse.Namespace) -> int:
    import time
    from .experiments import chapter7
    options_from_args(args).validate()  # the TrainOptions it takes (--workers): their ranges
    given = given_fields(args, EXPERIMENT_FIELDS)
    if "size_px" in given and "presize_px" not in given:
        given["presize_px"] = given["size_px"] * 3 // 2  # room for random crops and for larger-size TTA
    out = Path(args.out) if args.out else Path("runs") / f"chapter7-{time.strftime('%Y%m%d-%H%M%S')}"
    chapter7(out, runs=args.runs, workers=args.workers, **given)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from . import show
    from .data import make_dataloaders
    options_from_args(args).validate()  # the TrainOptions it takes (--workers): their ranges
    out = Path(args.out or f"{args.what}.png")
    # Before the data is read: an explicit --out is never replaced silently (the default name, the
    # picture's own, is rewritten as before), and its folder must be writable.
    check_new_file(out, "--out", args.overwrite or not args.out)
    recipe = dataclasses.replace(Recipe(), **{**SHOW_DEFAULTS, **given_fields(args, SHOW_FIELDS)})
    recipe.validate()  # the checks train makes: a size beyond the presize, say
    dls = make_dataloaders(recipe.data, size_px=recipe.size_px, presize_px=recipe.presize_px,
                           batch_size=9, seed=recipe.seed, workers=args.workers, progress=False,
                           valid_name=recipe.valid_name)
    if args.what == "mixup":
        show.show_mixup(dls, out, lam=args.lam)
    elif args.what == "batch":
        show.show_batch(dls, out)
    else:
        show.show_augs(dls, out)
    print(printable(out))
    return 0


def add_chapter_commands(sub) -> None:
    """`evaluate`, `experiments` and `show`: the chapter's TTA, comparison table and pictures."""
    evaluate = sub.add_parser("evaluate", help="accuracy of a trained run without and with test-time augmentation")
    add_flags(evaluate, EvaluateOptions)
    evaluate.set_defaults(func=cmd_evaluate)
    exp = sub.add_parser("experiments", help="the book chapter's techniques compared in one table")
    add_flags(exp, ExperimentOptions, ["name"])
    add_recipe_flags(exp, EXPERIMENT_FIELDS, EXPERIMENT_DEFAULTS)  # presize, when only the size is given: 1.5x it
    add_flags(exp, TrainOptions, ["workers"])
    add_flags(exp, ExperimentOptions, ["runs", "out"])
    exp.set_defaults(func=cmd_experiments)
    show = sub.add_parser("show", help="save the chapter's pictures: mixup, a batch, augmentations")
    add_flags(show, ShowOptions, ["what"])
    add_recipe_flags(show, SHOW_FIELDS, SHOW_DEFAULTS)
    add_flags(show, TrainOptions, ["workers"])
    add_flags(show, ShowOptions, ["lam", "out", "overwrite"])
    show.set_defaults(func=cmd_show)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_learner
    from .runs import load_run_weights
    if args.format != "vivace":
        return export_for_runtime(args)
    # Only the model is exported: data whose classes changed since is said, the model's classes kept.
    learn, weights = load_run_weights(Path(args.run), args.weights, keep_model_classes=True)
    out = Path(args.out) if args.out else Path(args.run) / "export.vivace"
    check_new_file(out, "-o", args.overwrite)  # a bundle someone may already be serving is not replaced silently
    print(f"weights: {weights}", file=sys.stderr)  # stdout stays the bundle's path, for scripts
    thresh = load_recipe(Path(args.run) / "config.json").thresh
    print(printable(export_learner(learn, out, tta=args.tta, weights=weights.kind, epoch=weights.epoch, thresh=thresh)))
    return 0


def export_for_runtime(args: argparse.Namespace) -> int:
    """`export --format onnx|torchscript`: the model file and its preprocessing JSON, checked as the bundle is."""
    from .deploy import SUFFIXES, export_model, preprocess_path, require_format
    from .runs import load_run_weights
    require_format(args.format)  # a missing package is said before the run is loaded
    out = Path(args.out) if args.out else Path(args.run) / f"export{SUFFIXES[args.format]}"
    for path in (out, preprocess_path(out)):
        check_new_file(path, "-o", args.overwrite)
    learn, weights = load_run_weights(Path(args.run), args.weights, keep_model_classes=True)
    print(f"weights: {weights}", file=sys.stderr)  # stdout stays the written paths, for scripts
    thresh = load_recipe(Path(args.run) / "config.json").thresh
    for path in export_model(learn, out, args.format, tta=args.tta, weights=weights.kind, epoch=weights.epoch,
                             thresh=thresh):
        print(path)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import expand_items, write_predictions_csv
    from .runs import load_predictor
    if args.topk < 1:
        raise ValueError(f"--topk {args.topk} must be >= 1")
    reuse_freed_memory()  # as `vivace train` does: evaluation measured 1.7-2.3x faster (runtime.py)
    predictor, weights = load_predictor(Path(args.bundle), device=args.device)
    if weights:
        print(printable(weights), file=sys.stderr)  # stdout stays the predictions, for scripts
    named, found = [], []  # images named on the command line; images found in folders
    for arg in args.images:
        (found if Path(arg).is_dir() else named).extend(expand_items(arg))
    if found:  # before predicting: a user's file is never replaced silently
        check_new_file(Path(args.csv), "--csv", args.overwrite)
    preds = predictor.predict_many(named + found, args.batch_size, tta=_tta_choice(args.tta))
    for p in preds:
        if not p.ok:
            print(f"vivace predict: {printable(p.error)}", file=sys.stderr)
    for p in preds[:len(named)] if not args.json else preds:
        if p.ok:  # the same classes printed or in JSON: --topk (1,000 per line would bury the answer)
            shown = len(predictor.vocab) if args.all_probs else _listed_count(p, args.topk)
            print(json.dumps(p.as_dict(shown)) if args.json else _format_prediction(p, shown))
    if found:
        csv_path = write_predictions_csv(preds[len(named):], args.csv, predictor.vocab)
        # With --json, stdout stays one JSON object per line: the summary goes to stderr.
        print(_folder_summary(preds[len(named):], csv_path), file=sys.stderr if args.json else sys.stdout)
    return 0 if any(p.ok for p in preds) else 1


def _tta_choice(flag: bool | None) -> str | None:
    return None if flag is None else "flip" if flag else "none"  # None: the bundle's default


def _shown_name(label: str) -> str:
    """A class as printed: its display name, control characters escaped (a bundle's vocab is data)."""
    from .data.names import display_name
    return printable(display_name(label))


def _listed_count(pred, topk: int) -> int:
    """The classes an image's output lists: --topk, and for several labels at least every label found."""
    return max(topk, len(pred.labels)) if pred.labels is not None else topk


def _format_prediction(pred, shown: int) -> str:
    """The image's answer, then its `shown` most probable classes, one a line."""
    if pred.labels is not None:  # several labels per image: every one above the threshold
        found = ", ".join(_shown_name(label) for label in pred.labels) or "(no label above the threshold)"
    else:
        found = _shown_name(pred.label)
    return "\n".join([f"{printable(pred.path)}: {found}"] + [f"  {_shown_name(label):<24} {prob:.4f}"
                                                              for label, prob in pred.top(shown)])


SUMMARY_CLASSES = 10  # the most predicted classes a folder's summary names; the CSV has every image's


def _folder_summary(preds: list, csv_path: Path) -> str:
    ok = [p for p in preds if p.ok]
    counts: dict[str, int] = {}
    for p in ok:
        for label in (p.labels if p.labels is not None else [p.label]):  # several labels: each counts
            counts[_shown_name(label)] = counts.get(_shown_name(label), 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{label} {n}" for label, n in ranked[:SUMMARY_CLASSES])
    more = f" and {len(ranked) - SUMMARY_CLASSES:,} more classes" if len(ranked) > SUMMARY_CLASSES else ""
    return (f"{len(ok)} of {len(preds)} images in folders predicted ({len(preds) - len(ok)} failed); "
            f"predicted classes: {top or '-'}{more}\nwrote {printable(csv_path)}")


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .runs import load_run_weights
    run = Path(args.run)
    if run.is_dir():  # checked before the model is scored (a missing run is said by load_run_weights)
        ensure_writable_folder(run, f"the run folder {run} (for report.html)",
                               "make it writable, or copy the run folder somewhere writable and report on the copy")
    learn, weights = load_run_weights(run, args.weights)
    print(f"weights: {weights}", file=sys.stderr)  # stdout stays the report's path, for scripts
    print(printable(write_report(run, learn)))
    return 0


def add_deploy_commands(sub) -> None:
    """`export`, `predict` and `report`: a trained run as a bundle, predictions and an HTML report."""
    export = sub.add_parser("export", help="write a run's model as one safe bundle file for `predict` (or as "
                                           "ONNX or TorchScript, with its preprocessing as JSON)")
    add_flags(export, ExportOptions)
    export.set_defaults(func=cmd_export)
    predict = sub.add_parser("predict", help="classify images (files or folders) with an exported bundle")
    add_flags(predict, PredictOptions)
    predict.set_defaults(func=cmd_predict)
    report = sub.add_parser("report", help="(re)write RUN/report.html from a run's saved weights")
    add_flags(report, RunOptions)
    report.set_defaults(func=cmd_report)


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .build import build_dataloaders, build_learner
    from .lr_finder import lr_find
    from .runtime import configure_process
    recipe, options = recipe_from_args(args, options_from_args(args))
    options.validate()
    plot = Path(args.plot) if args.plot else _unused_path(Path("lr_find.png"))
    check_new_file(plot, "--plot", args.overwrite)  # before the sweep, not after it
    configure_process(options.threads, options.reuse_memory)
    # The sweep writes no checkpoint or log.
    learn = build_learner(recipe, build_dataloaders(recipe, workers=options.workers), Path("."))
    result = lr_find(learn, args.start_lr, args.end_lr, args.num_it)
    result.plot(plot)
    print(f"valley   {result.valley:.2e}  (suggested: --lr {result.valley:.2g})")
    print(f"steep    {result.steep:.2e}  (the loss falls fastest)")
    print(f"minimum  {result.minimum:.2e}  (a tenth of the rate at the lowest loss)")
    print(f"wrote {printable(plot)}")
    return 0


def _unused_path(path: Path) -> Path:
    """`path`, or path-2, path-3, ... when taken: a default name never overwrites a file."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


LR_FIND_SETTINGS = ("preset", "threads", "reuse_memory", "workers")  # the TrainOptions the sweep uses


def add_lr_find_command(sub) -> None:
    """`lr-find`: the LR sweep on the data and model `train` would use, its suggestions and plot."""
    lr_find = sub.add_parser("lr-find", help="sweep learning rates; print fastai's suggestions and plot loss vs LR",
                             description="Sweep the learning rate on the data and model that `train` would use "
                                         "(the same flags), print fastai's valley (suggested), steep and minimum "
                                         "rates, and plot the smoothed loss against the rate.")
    add_recipe_flags(lr_find)
    add_flags(lr_find, TrainOptions, LR_FIND_SETTINGS)
    add_flags(lr_find, LrFindOptions)
    lr_find.set_defaults(func=cmd_lr_find)


def train_description() -> str:
    """train's help text: the defaults it shows are a bare `vivace train`'s; with --data, Recipe's."""
    quick, plain = PRESETS[DEFAULT_PRESET], Recipe()
    differ = [f"{f.name} {getattr(plain, f.name)}" for f in dataclasses.fields(Recipe)
              if f.name != "data" and getattr(quick, f.name) != getattr(plain, f.name)]
    return (f"Train a model. Presets: {', '.join(PRESETS)}. With neither --data nor --preset, the "
            f"'{DEFAULT_PRESET}' preset trains on the embedded dataset: the defaults shown below are its "
            f"values. With --data and no --preset, these fields default otherwise: {', '.join(differ)}.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vivace", description="Train image classifiers from scratch, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (default: the embedded dataset, in about a minute)",
                           description=train_description())
    add_recipe_flags(train, defaults=dataclasses.asdict(PRESETS[DEFAULT_PRESET]))  # what a bare `vivace train` runs
    add_flags(train, TrainOptions)
    train.set_defaults(func=cmd_train)
    add_lr_find_command(sub)
    download = sub.add_parser("download", help="download and extract a dataset by name")
    add_flags(download, DownloadOptions)
    download.set_defaults(func=cmd_download)
    add_chapter_commands(sub)
    add_deploy_commands(sub)
    for command in (parser, *subcommands(parser).values()):
        command.allow_abbrev = False  # `--epoch 3` is a typo, not `--epochs 3`
    return parser


_PYTHON_FORMAT_WARNING = warnings.formatwarning
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _format_warning(command: str, message, category, filename: str, lineno: int, line=None) -> str:
    if str(filename).startswith(_PACKAGE_DIR):
        return f"vivace {command}: warning: {printable(message)}\n"  # paths and names are data
    return _PYTHON_FORMAT_WARNING(message, category, filename, lineno, line)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an unknown flag gets its subcommand's usage and the nearest flag names (not the top-level usage)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = subcommands(parser)[args.command]
        known = [flag for action in command._actions for flag in action.option_strings]
        near = sorted({m for arg in unknown if arg.startswith("-")
                       for m in difflib.get_close_matches(arg.split("=")[0], known, n=3, cutoff=0.6)})
        command.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; did you mean {', '.join(near)}?" if near else ""))
    return args


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser by name."""
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    # vivace's warnings (skipped images, symlink loops) as one line each, without the source line;
    # formatwarning is the hook Python documents for this. Other libraries' keep Python's format.
    warnings.formatwarning = functools.partial(_format_warning, args.command)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Errors at the edges (bad paths, flags, data) end with a message, not a traceback.
        # printable: a path or class name in the message must not drive the terminal (nor split the line).
        print(f"vivace {args.command}: error: {printable(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a fit (caching, a second Ctrl-C): what is on disk is whole
        print(f"{_off_the_echoed_line()}vivace {args.command}: interrupted; files are written whole or not at all"
              + (" (`--resume` continues from the last checkpoint)" if args.command == "train" else ""),
              file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
