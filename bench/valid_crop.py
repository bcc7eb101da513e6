"""The validation view of a finished run: accuracy at other sizes and centre-crop fractions.

    .venv/bin/python bench/valid_crop.py runs/sr15-s42 160:1.0 160:0.875 128:0.875

Each SIZE:CROP resizes the central CROP fraction of the cached square to SIZE px (`ValidResize`,
`Recipe.valid_size` / `valid_crop`) and evaluates the run's final weights on the whole
validation set: a post-hoc measurement of the lever without retraining.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from vivace.augment import ValidResize
from vivace.data import Pipeline
from vivace.train import load_run


def parse_view(text: str) -> tuple[int, float]:
    size, _, crop = text.partition(":")
    return int(size), float(crop or 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a `vivace train --out` directory")
    p.add_argument("views", nargs="+", type=parse_view, help="SIZE:CROP, e.g. 128:0.875")
    p.add_argument("--weights", default="final", choices=("final", "best"))
    args = p.parse_args()
    learn = load_run(args.run, args.weights)
    for size, crop in args.views:
        learn.dls.valid.transform = Pipeline(ValidResize(size, crop), learn.dls.normalize)
        start = time.perf_counter()
        accuracy = learn.validate()["accuracy"]
        print(f"{args.run.name}: size {size} crop {crop}: accuracy {accuracy:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
