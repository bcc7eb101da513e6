"""The options of the commands other than `train` (whose flags are the Recipe's), as dataclasses.

`vivace.cli` turns each into flags with `vivace.flags.add_flags`, as it does the Recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .deploy import RuntimeFormat
from .flags import arg, knob
from .inference import BundleTTA
from .tta import TTAKind


@dataclass
class RunOptions:
    """`vivace report RUN`: a trained run and which of its weights."""

    run: str = arg("a run directory (the --out of `vivace train`)")
    weights: Literal["final", "best"] = knob(
        "final", "final: the model at the end of training, as `train` reports it; best: the epoch with the "
                 "best validation accuracy (chosen on that same set)")


@dataclass
class EvaluateOptions(RunOptions):
    """`vivace evaluate RUN`: accuracy without and with test-time augmentation."""

    tta: Literal[TTAKind, "all"] = knob("all", "the kind of test-time augmentation to compare with none, or all")
    size_px: int | None = knob(None, "also evaluate at this size, px (<= the run's presize)",
                               aliases=("size",))
    crop: float | None = knob(None, "central fraction of each side shown (default: the run's --valid-crop)")
    view: Literal["squash", "square"] | None = knob(None, "squash the whole image or cut its central square "
                                                          "(default: the run's --valid-view)")


@dataclass
class ExportOptions(RunOptions):
    """`vivace export RUN`: the run's model as one safe bundle (or for another runtime)."""

    format: Literal["vivace", RuntimeFormat] = knob(
        "vivace", "vivace: one safe bundle for `vivace predict`; onnx, torchscript: the model for other runtimes, "
                  "its preprocessing beside it as JSON (docs/export.md)")
    out: str = knob("", 'output path; "" = RUN/export.vivace (.onnx, .pt)', short="-o")
    tta: BundleTTA = knob("none", "the bundle's default test-time augmentation (onnx, torchscript: built in)")
    overwrite: bool = knob(False, "replace the output files if they exist")


@dataclass
class PredictOptions:
    """`vivace predict BUNDLE IMAGES...`: classify images with an exported bundle."""

    bundle: str = arg("a bundle written by `vivace export`, or a run folder (its export.vivace, else its final weights)")
    images: list[str] = arg("image files or folders (searched recursively)", nargs="+")
    topk: int = knob(3, "classes listed per image, most probable first (printed, or in --json's probs)")
    all_probs: bool = knob(False, "list every class's probability per image, not the --topk most probable")
    tta: bool | None = knob(None, "average with the mirror image (default: the bundle's setting)")
    json: bool = knob(False, "one JSON object per image: path, label, name, probs (the --topk most probable classes)")
    csv: str = knob("predictions.csv", "where the predictions for folder inputs are written")
    overwrite: bool = knob(False, "replace the --csv file if it exists")
    batch_size: int = knob(64, "images per forward pass")
    device: str | None = knob(None, "cpu, cuda, cuda:1, ... (default: CUDA if available)")


@dataclass
class LrFindOptions:
    """`vivace lr-find`: the sweep's own settings (the data and model are the Recipe's)."""

    num_it: int = knob(100, "batches in the sweep")
    start_lr: float = knob(1e-7, "first rate")
    end_lr: float = knob(10.0, "last rate")
    plot: str = knob("", 'PNG path; "" = lr_find.png, or lr_find-N.png if taken')
    overwrite: bool = knob(False, "replace the --plot file if it exists")


@dataclass
class ShowOptions:
    """`vivace show WHAT`: the chapter's pictures."""

    what: Literal["mixup", "batch", "augs"] = arg("which picture")
    lam: float = knob(0.7, "mixup: the weight of the first image")
    out: str = knob("", 'PNG path; "" = <what>.png (rewritten each time)')
    overwrite: bool = knob(False, "replace the --out file if it exists")


@dataclass
class ExperimentOptions:
    """`vivace experiments chapter7`: the chapter's comparison table."""

    name: Literal["chapter7"] = arg("which comparison")
    runs: int = knob(1, "seeded runs per technique; > 1 reports mean ± std")
    out: str = knob("", 'output folder; "" = runs/chapter7-<timestamp>')


@dataclass
class DownloadOptions:
    """`vivace download NAME`."""

    name: str = arg("imagenette, imagenette-320, imagenette-160, imagewoof, ...")
