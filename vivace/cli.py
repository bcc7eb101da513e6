"""`vivace` command line: each `train` flag is a field of `Recipe`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .recipe import PRESETS, Recipe, make_recipe

FIELD_HELP_SOURCE = Path(__file__).with_name("recipe.py")
DEFAULT_PRESET = "quick"


def _field_help() -> dict[str, str]:
    """Each Recipe field's trailing comment, used as its --help text."""
    helps = {}
    for line in FIELD_HELP_SOURCE.read_text().splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and "#" in rest and name.isidentifier():
            helps[name] = rest.split("#", 1)[1].strip()
    return helps


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Recipe field; unset flags stay None so presets can fill them."""
    helps = _field_help()
    for f in dataclasses.fields(Recipe):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        text = f"{helps.get(f.name, '')} (default: {default!r})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=type(default), default=None, help=text)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """Preset (or, with --resume, the run's saved config), then the flags given explicitly."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    if given.get("resume") and given.get("out"):
        saved = json.loads((Path(given["out"]) / "config.json").read_text())
        return make_recipe(**{**saved, **given})
    if not given.get("preset") and not given.get("data"):
        given["preset"] = DEFAULT_PRESET  # no data named: the embedded dataset's quick job
    return make_recipe(**given)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainingFailed, train
    recipe = recipe_from_args(args)
    try:
        result = train(recipe)
    except TrainingFailed as err:
        print(f"vivace train: {err}", file=sys.stderr)
        return 1
    _print_result(result)
    return 0


def _print_result(result: dict[str, Any]) -> None:
    if "accuracy" in result and isinstance(result["accuracy"], dict):
        for key, v in result.items():
            print(f"{key}: {v['mean']:.4f} ± {v['std']:.4f}")
    else:
        print(f"final accuracy: {result['accuracy']:.4f}  (valid_loss {result['valid_loss']:.4f})")


def cmd_download(args: argparse.Namespace) -> int:
    from .data.datasets import ensure_dataset
    print(ensure_dataset(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vivace", description="Train image classifiers from scratch, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (default: the embedded dataset, in ~2 minutes)",
                           description=f"Train a model. Presets: {', '.join(PRESETS)}. With neither "
                                       f"--data nor --preset, the '{DEFAULT_PRESET}' preset trains on the embedded dataset.")
    add_recipe_flags(train)
    train.set_defaults(func=cmd_train)
    download = sub.add_parser("download", help="download and extract a dataset by name")
    download.add_argument("name", help="imagenette, imagenette-320, imagenette-160, imagewoof, ...")
    download.set_defaults(func=cmd_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Errors at the edges (bad paths, flags, data) end with a message, not a traceback.
        print(f"vivace {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
