"""The environment variables vivace reads, each through `read_env`: a bad value ends in one line
naming the variable and what it must be, never in a bare `int()` error or a folder named ' '."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def read_env(name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
    """`$name` parsed by `parse` (which raises ValueError on a bad value), `default` when unset."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} must be {expected}; fix or unset it") from None


def env_int(name: str, default: int, low: int) -> int:
    """An integer >= `low` (torchrun's WORLD_SIZE, RANK, LOCAL_RANK)."""
    return read_env(name, default, lambda text: _at_least(int(text), low), f"an integer >= {low}")


def env_seconds(name: str, default: float) -> float:
    """A finite number of seconds > 0."""
    return read_env(name, default, lambda text: _positive_finite(float(text)), "a finite number of seconds > 0")


def env_folder(name: str, default: Path) -> Path:
    """A folder path; empty counts as unset, blank (only spaces) is refused: `' '` would make a folder named ' '."""
    return read_env(name, default, lambda text: Path(_not_blank(text)).expanduser() if text else default,
                    "a folder path, not blank")


def env_choice(name: str, choices: Sequence[str], default: str) -> str:
    """One of `choices`, case and surrounding spaces ignored; empty counts as unset."""
    return read_env(name, default, lambda text: _one_of(text.strip().lower() or default, choices),
                    f"one of {', '.join(choices)}")


def _at_least(value: int, low: int) -> int:
    if value < low:
        raise ValueError(value)
    return value


def _positive_finite(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(value)
    return value


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text


def _one_of(value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(value)
    return value
