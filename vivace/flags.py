"""Fields that describe themselves, and command-line flags generated from them.

A field made with `knob` carries its help, its allowed range and older names; its choices come
from a `Literal` type. `check_fields` is the one check of ranges and choices: `Recipe.validate`
and the functions a spec configures (`TrainAugment`, ...) both call it. `train` and `lr-find`
take the `Recipe`'s fields (`vivace/recipe.py`); the other commands take the small option
classes of `vivace/options.py`; `arg` marks a positional argument.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
from typing import Any, Callable, Literal, Sequence, Union, get_args, get_origin, get_type_hints


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number field allows; `high=inf`: no upper bound (the value must still be finite)."""

    low: float
    high: float = math.inf
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False

    def check(self, name: str, value: float) -> None:
        """ValueError naming the field, its value and this range when the value is outside it."""
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = value >= self.high if self.high_open else value > self.high
        if not math.isfinite(value) or too_low or too_high:  # nan fails every comparison: test it explicitly
            raise ValueError(f"{name}={value} must be {'' if math.isfinite(value) else 'a finite number '}{self}")

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(x: float) -> str:
    """A bound as written: 4294967295, not :g's 4.29497e+09; 0.001 as 0.001."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def knob(default: Any, help: str, aliases: Sequence[str] = (), short: str = "", range: Range | None = None,
         parse: Callable[[str], Any] | None = None) -> Any:
    """A field with its --help text and allowed `range`; `aliases`: old names, still accepted as flags;
    `parse`: how its flag's text becomes a value (default: the field's type)."""
    return dataclasses.field(default=default, metadata={"help": help, "aliases": tuple(aliases), "short": short,
                                                        "range": range, "parse": parse})


def arg(help: str, nargs: str | None = None) -> Any:
    """A positional argument (a required field)."""
    return dataclasses.field(metadata={"help": help, "positional": True, "nargs": nargs})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def escape_percent(text: str) -> str:
    """argparse formats help with `%`: a literal one ("a random 20 % split") must be doubled."""
    return text.replace("%", "%%")


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


def check_fields(obj: Any) -> None:
    """ValueError for the first field of dataclass `obj` outside its `range` or its Literal's choices."""
    choices = literal_choices(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in choices and value not in choices[f.name]:
            raise ValueError(f"{f.name}={value!r} is not one of: {', '.join(map(str, choices[f.name]))}")
        if f.metadata.get("range") is not None:
            f.metadata["range"].check(f.name, value)


def flag_type(parse: Callable[[str], Any] | None) -> Callable[[str], Any] | None:
    """`parse` as argparse's type: its ValueError's message is what argparse prints."""
    if parse is None:
        return None

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert


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
            parser.add_argument(f.name, help=escape_percent(f.metadata["help"]), nargs=f.metadata["nargs"], choices=choices)
            continue
        flags = [f.metadata["short"]] if f.metadata.get("short") else []
        flags += [flag_name(f.name), *(flag_name(old) for old in f.metadata.get("aliases", ()))]
        default = None if unset_is_none else f.default
        shown = (shown_defaults or {}).get(f.name, f.default)
        allowed = f"; {f.metadata['range']}" if f.metadata.get("range") is not None else ""
        text = escape_percent(f.metadata["help"] + allowed + (f" (default: {shown!r})" if shown is not None else ""))  # None: the help says
        if kind is bool and (unset_is_none or f.default is not False):  # --x / --no-x
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif kind is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", help=text)
        else:
            parser.add_argument(*flags, dest=f.name, type=flag_type(f.metadata.get("parse")) or kind, default=default, help=text,
                                choices=choices)
