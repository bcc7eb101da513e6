"""Command-line flags generated from dataclass fields, the same way for every command.

`train` and `lr-find` take the `Recipe`'s fields (`vivace/recipe.py`); the other commands take
the small option classes of `vivace/options.py`. A field's help is its metadata (`knob`), its
choices come from a `Literal` type, `aliases` are older flag names that keep working, and `arg`
marks a positional argument.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
from typing import Any, Literal, Sequence, Union, get_args, get_origin, get_type_hints


def knob(default: Any, help: str, aliases: Sequence[str] = (), short: str = "") -> Any:
    """A field with its --help text; `aliases`: old names of the field, still accepted as flags."""
    return dataclasses.field(default=default, metadata={"help": help, "aliases": tuple(aliases), "short": short})


def arg(help: str, nargs: str | None = None) -> Any:
    """A positional argument (a required field)."""
    return dataclasses.field(metadata={"help": help, "positional": True, "nargs": nargs})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def base_type(hint: Any) -> tuple[type, tuple[Any, ...] | None]:
    """(type, choices) of a field's annotation: `int | None` -> (int, None), a Literal -> (str, its values)."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(h for h in get_args(hint) if h is not type(None))
    if get_origin(hint) is Literal:
        return type(get_args(hint)[0]), get_args(hint)
    if get_origin(hint) is list:
        return get_args(hint)[0], None
    return hint, None


def literal_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """The allowed values of each field of `cls` typed as a Literal."""
    hints = get_type_hints(cls)
    return {f.name: choices for f in dataclasses.fields(cls) if (choices := base_type(hints[f.name])[1])}


def add_flags(parser: argparse.ArgumentParser, cls: type, names: Sequence[str] = (),
              shown_defaults: dict[str, Any] | None = None, unset_is_none: bool = False) -> None:
    """One argument per field of `cls` (or per field in `names`), with `dest` the field's name.

    `unset_is_none`: a flag not given stays None, so a preset or saved run can fill it (the
    Recipe's flags); `shown_defaults` are the defaults the command fills in, shown in the help.
    """
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if names and f.name not in names:
            continue
        kind, choices = base_type(hints[f.name])
        if f.metadata.get("positional"):
            parser.add_argument(f.name, help=f.metadata["help"], nargs=f.metadata["nargs"], choices=choices)
            continue
        flags = [f.metadata["short"]] if f.metadata.get("short") else []
        flags += [flag_name(f.name), *(flag_name(old) for old in f.metadata.get("aliases", ()))]
        default = None if unset_is_none else f.default
        shown = (shown_defaults or {}).get(f.name, f.default)
        text = f.metadata["help"] + (f" (default: {shown!r})" if shown is not None else "")  # None: the help says
        if kind is bool and (unset_is_none or f.default is None):  # --x / --no-x, unset: None
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", help=text)
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=default, help=text, choices=choices)
