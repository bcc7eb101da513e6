"""The runner: `python -m bench NAME [args]` runs bench/NAME.py's `main(args)`; alone, it lists them.

Run from the repository root (or with it on PYTHONPATH). The list is this file's BENCHMARKS, by
hand: a new benchmark module is added here, and tests/test_bench.py fails until it is.
"""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

# name -> module in this package; each module has a docstring and `main(argv: list[str]) -> int | None`.
BENCHMARKS = {
    "throughput": "throughput",
    "pipeline": "pipeline",
    "accuracy": "accuracy",
    "allocator": "allocator",
    "affinity": "affinity",
    "switches": "switches",
    "distributed": "distributed",
    "gpu": "gpu",
    "peer_fastai": "peer_fastai",
    "peer_timm": "peer_timm",
    "peer_fastai_accuracy": "peer_fastai_accuracy",
    "transfer": "transfer",
    "table": "table",
    "budget": "budget",
    "scale": "scale",
}


def summary(module: str) -> str:
    """The first line of a module's docstring, read without importing it (the peers need fastai/timm)."""
    source = (Path(__file__).parent / f"{module}.py").read_text(encoding="utf-8")
    return (ast.get_docstring(ast.parse(source)) or "").splitlines()[0]


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    rows = "\n".join(f"  {name:<{width}}  {summary(module)}" for name, module in BENCHMARKS.items())
    return (f"usage: python -m bench NAME [args]   (python -m bench NAME --help for its options)\n\n"
            f"benchmarks:\n{rows}\n\n"
            "Data: --data PATH or $VIVACE_BENCH_DATA. Figures and their commands: docs/BENCHMARKS.md.")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"python -m bench: error: no benchmark {name!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"bench.{BENCHMARKS[name]}").main(rest) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
