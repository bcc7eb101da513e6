"""Export for other runtimes: ONNX and TorchScript, with the preprocessing written beside as JSON.

The exported model takes the batch `Predictor` feeds its model, normalized float32 pixels
(B, 3, size, size) NCHW RGB, and returns the probabilities `predict` gives: a softmax over the
classes (a sigmoid per class for several labels per image), averaged with the mirror image when
exported with `tta="flip"`. How an image becomes that batch (decode, presize, validation view,
normalization) is data, not code: `<model file>.preprocess.json` (`preprocess_info`, fields in
docs/export.md) holds it, and the model file carries the same JSON (ONNX metadata
`vivace.preprocess`; a TorchScript extra file `preprocess.json`). Both files are written atomically.
"""
from __future__ import annotations

import io
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, get_args

import torch
from torch import Tensor, nn

from .data.eval_view import EvalView
from .export import build_model, bundle_info
from .extras import require
from .files import atomic_write
from .metrics import probabilities
from .views import ValidResize

RuntimeFormat = Literal["onnx", "torchscript"]
RUNTIME_FORMATS: tuple[str, ...] = get_args(RuntimeFormat)
SUFFIXES = {"vivace": ".vivace", "onnx": ".onnx", "torchscript": ".pt"}  # `vivace export`'s default RUN/export<suffix>
PREPROCESS_FORMAT = "vivace-preprocess"
PREPROCESS_VERSION = 1  # bump when a field changes meaning
INPUT, OUTPUT = "pixels", "probs"  # the exported graph's input and output names
ONNX_OPSET = 17  # every op here has had its current form since; onnxruntime >= 1.14 runs it
EXAMPLE_BATCH = 2  # the traced example; the batch dimension stays free (ONNX: dynamic axis "batch")


class Probabilities(nn.Module):
    """A classifier as exported: normalized pixels (B, 3, S, S) -> probabilities (B, C), as `Predictor`
    computes them (softmax, or a sigmoid per class; with `flip`, averaged with the mirror image)."""

    def __init__(self, model: nn.Module, multi_label: bool = False, flip: bool = False):
        super().__init__()
        self.model, self.multi_label, self.flip = model, multi_label, flip

    def forward(self, x: Tensor) -> Tensor:
        p = probabilities(self.model(x), self.multi_label)
        if self.flip:
            p = (p + probabilities(self.model(x.flip(-1)), self.multi_label)) / 2
        return p


def preprocess_path(model_path: str | Path) -> Path:
    """Where the preprocessing JSON of `model_path` goes: beside it, `<name>.preprocess.json`
    (export.onnx -> export.onnx.preprocess.json, so an ONNX and a TorchScript export can share a folder)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".preprocess.json")


def require_format(fmt: str) -> None:
    """RuntimeError naming the extra when `fmt` needs a package that is missing (before any heavy work)."""
    if fmt == "onnx":
        require("onnx", "--format onnx", "onnx")


def export_model(learn: Any, path: str | Path, fmt: RuntimeFormat, tta: str = "none", weights: str = "final",
                 epoch: int | None = None, thresh: float = 0.5) -> tuple[Path, Path]:
    """Write `learn`'s model as ONNX or TorchScript at `path` and its preprocessing JSON beside it
    (`preprocess_path`); returns both paths. `tta`, `weights`, `epoch`, `thresh` as `export_learner`."""
    if fmt not in RUNTIME_FORMATS:
        raise ValueError(f"format={fmt!r} is not one of: {', '.join(RUNTIME_FORMATS)}")
    require_format(fmt)
    info = bundle_info(learn, tta, weights, epoch, thresh)  # checks tta and that the model is an XResNet
    state = {k: v.detach().cpu() for k, v in learn.model.state_dict().items()}
    # A fresh fp32 CPU copy in the default memory format: the Learner's model stays as it is.
    model = Probabilities(build_model(info, state), info["multi_label"], tta == "flip").eval()
    path = Path(path)
    text = json.dumps(preprocess_info(info, learn.dls.eval_view, path.name, fmt), indent=2)
    example = torch.zeros(EXAMPLE_BATCH, info["config"]["c_in"], info["size"], info["size"])
    with torch.no_grad(), _quiet_tracing():
        data = _onnx_bytes(model, example, text) if fmt == "onnx" else _torchscript_bytes(model, example, text)
    with atomic_write(path, fsync=True) as tmp:
        tmp.write_bytes(data)
    json_path = preprocess_path(path)
    with atomic_write(json_path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path, json_path


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Both exports trace the model. torch 2.13 warns that torch.jit.trace and the TorchScript-based
    ONNX exporter are deprecated (torch is pinned; the tests catch a removal), and that a Python
    branch is traced as a constant: the one in the model (`models.layers.Conv2d`'s fp32 detour
    under CPU autocast) is never taken in this fp32 export, so the constant is right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _onnx_bytes(model: nn.Module, example: Tensor, preprocess: str) -> bytes:
    """The ONNX file's bytes, with the preprocessing JSON in its metadata, checked by onnx."""
    import onnx  # lazy: an optional extra
    buffer = io.BytesIO()
    # The TorchScript-based exporter (dynamo=False): it runs offline on the CPU with no package
    # beyond onnx, in ~1 s on xresnet18; the torch.export-based one (torch's default since 2.9)
    # also needs onnxscript and took 4-7 s here, for the same graph (probabilities within 3e-7).
    torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=ONNX_OPSET)
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "vivace.preprocess", preprocess
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _torchscript_bytes(model: nn.Module, example: Tensor, preprocess: str) -> bytes:
    """The TorchScript file's bytes (torch.jit.load reads them), the JSON as extra file preprocess.json."""
    traced = torch.jit.trace(model, example)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"preprocess.json": preprocess})
    return buffer.getvalue()


def preprocess_info(info: dict[str, Any], view: EvalView, model_file: str, fmt: str) -> dict[str, Any]:
    """The preprocessing JSON: how another runtime turns an image into the model's input, and reads
    its output (docs/export.md lists the fields)."""
    n_classes = len(info["vocab"])
    return {
        "format": PREPROCESS_FORMAT, "version": PREPROCESS_VERSION, "model": model_file, "model_format": fmt,
        "input": {"name": INPUT, "shape": ["batch", info["config"]["c_in"], view.size, view.size],
                  "dtype": "float32", "layout": "NCHW", "channels": "RGB"},
        "output": {"name": OUTPUT, "shape": ["batch", n_classes], "tta": info["tta"],
                   "activation": "sigmoid" if info["multi_label"] else "softmax"},
        **view.bundle_fields(),  # size, crop, square, presize, max_aspect, normalize: as the bundle has them
        "resize_px": ValidResize(view.size, view.crop).resized,  # squash: the side before the centre cut
        "vocab": info["vocab"], "multi_label": info["multi_label"], "thresh": info["thresh"],
        "weights": info["weights"], "epoch": info["epoch"],
        "steps": preprocess_steps(view, n_classes, info["multi_label"]),
    }


def preprocess_steps(view: EvalView, n_classes: int, multi_label: bool) -> list[str]:
    """The preprocessing in words, with this export's numbers (the JSON's `steps`)."""
    side = f"{view.size} x {view.size} px"
    resized = ValidResize(view.size, view.crop).resized
    if view.square:
        cut = (f"cut the central square of side {view.crop:g} x the shorter side and resize it to {side} "
               "(bilinear, antialiased)")
    elif resized == view.size:
        cut = f"squash the whole image to {side} (bilinear, antialiased)"
    else:
        cut = (f"squash the whole image to {resized} x {resized} px (bilinear, antialiased), then cut its central "
               f"{side} (from pixel {(resized - view.size) // 2} in each direction)")
    scale = ("as float32 / 255, then (x - mean) / std per channel (normalize.mean, normalize.std, RGB order)"
             if view.normalize is not None else "as float32 / 255 (no normalization)")
    answer = ("the labels: every class whose probability exceeds thresh" if multi_label
              else "the label: the most probable class")
    return [
        "decode the image to RGB (EXIF orientation applied; transparency over white)",
        f"resize it so its shorter side is {view.presize} px (Lanczos); a longer side beyond "
        f"{view.max_aspect:g} x the shorter keeps its central part",
        cut,
        f"pixels {scale}",
        f"stack images as input (batch, 3, {view.size}, {view.size}) float32 NCHW; the output (batch, "
        f"{n_classes}) holds each class's probability in vocab order; {answer}",
    ]
