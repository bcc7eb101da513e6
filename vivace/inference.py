"""Inference: images (paths, folders, PIL images) -> class probabilities, preprocessed as in training.

Each image goes the validation path: decode it whole, shorter side `presize` (`load_image_rgb`, the
cache's own code), then `ValidResize(size)` and `Normalize` on the device, batch by batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence, Union, get_args

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .data.cache import DECODE_ERRORS, load_image_rgb, prepare_image
from .data.eval_view import EvalView
from .data.names import display_name
from .data.sources import find_images
from .files import write_csv
from .metrics import probabilities
from .pictures import Pictures
from .runtime import autocast, autocast_dtype

BundleTTA = Literal["none", "flip"]  # what a bundle (and `predict`) may apply: flip is the cheapest TTA
TTA_MODES: tuple[str, ...] = get_args(BundleTTA)
Item = Union[str, Path, Image.Image]


@dataclass
class Prediction:
    """One image's result: `label`, its `index`, and `probs` (C,); or `error` if it failed.

    For a model of several labels per image, `labels` are the classes whose probability (a
    sigmoid each) passes the threshold, most probable first, and `label` is the most probable.
    """

    label: str
    index: int
    probs: Tensor
    path: str | None = None
    error: str | None = None
    classes: list[str] = field(default_factory=list, repr=False)
    labels: list[str] | None = None  # several labels per image: those above the threshold

    @property
    def ok(self) -> bool:
        return self.error is None

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable (class, probability) pairs, most probable first."""
        values, indices = self.probs.topk(min(k, len(self.probs)))
        return [(self.classes[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]

    @property
    def name(self) -> str:
        """The label as people read it (Imagenette's n01440764 -> tench); `label` stays the id."""
        return display_name(self.label)

    def as_dict(self, k: int | None = None) -> dict:
        """JSON-ready: path, label (the class id), its name, and the class -> probability map of the
        `k` most probable classes, most probable first (every class when k is None: 1,000 at
        ImageNet's size); for several labels per image also `labels`, those above the threshold."""
        if not self.ok:
            return {"path": self.path, "error": self.error}
        several = {"labels": self.labels} if self.labels is not None else {}
        return {"path": self.path, "label": self.label, "name": self.name, **several,
                "probs": dict(self.top(len(self.probs) if k is None else k))}


def failed(path: str | None, error: str) -> Prediction:
    """The entry for an image that could not be read."""
    return Prediction(label="", index=-1, probs=torch.empty(0), path=path, error=error)


def expand_items(items: Item | Iterable[Item]) -> list[Item]:
    """A flat list of images: each folder (given alone or in the list) becomes its sorted image files."""
    if isinstance(items, (str, Path, Image.Image)):
        items = [items]
    out: list[Item] = []
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            found = find_images(Path(item))
            if not found:
                raise ValueError(f"{item} is a folder with no images (.jpg, .jpeg, .png, .webp, .bmp)")
            out.extend(found)
        else:
            out.append(item)
    return out


class Predictor:
    """A trained model ready for inference: eval mode on `device`, with its classes and preprocessing.

    Args:
        view: how validation showed images in training (`DataLoaders.eval_view`, or a bundle's):
            decoded as the cache did (presize, max_aspect), then `ValidResize` and Normalize.
        tta: default test-time augmentation, 'none' or 'flip' (average with the mirror image).
        device: None = CUDA if available, else CPU.
        amp: mixed precision as in training ('auto': bf16 on CUDA and AMX CPUs); see
            `vivace.runtime.autocast_dtype`. With the Learner's setting, predictions equal its get_preds.
        multi_label, thresh: several labels per image: a sigmoid per class, and the probability
            above which a class is one of the image's labels.
    """

    def __init__(self, model: nn.Module, vocab: Sequence[str], view: EvalView, tta: str = "none",
                 device: str | torch.device | None = None, amp: str = "auto", multi_label: bool = False,
                 thresh: float = 0.5):
        if tta not in TTA_MODES:
            raise ValueError(f"tta={tta!r} is not one of: {', '.join(TTA_MODES)}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():  # torch would fail an assert
            raise ValueError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                             f"{'no GPU visible' if torch.backends.cuda.is_built() else 'built without CUDA'}); "
                             "use --device cpu, or leave --device out")
        # channels_last as in training: the same conv kernels, so the same numbers.
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.vocab, self.view, self.tta = list(vocab), view, tta
        self.amp_dtype = autocast_dtype(self.device, amp)
        self.multi_label, self.thresh = multi_label, thresh

    @property
    def size(self) -> int:
        return self.view.size

    def predict(self, item: Item | Iterable[Item], batch_size: int = 64,
                tta: BundleTTA | None = None) -> Prediction | list[Prediction]:
        """One Prediction for one image (path or PIL); a list for a list or a folder.

        In a list, an unreadable image gives an entry with `error` set and the rest go on;
        a single unreadable image raises ValueError.
        """
        single = isinstance(item, Image.Image) or (isinstance(item, (str, Path)) and not Path(item).is_dir())
        preds = self.predict_many(expand_items(item), batch_size, tta)
        if single and not preds[0].ok:
            raise ValueError(preds[0].error)
        return preds[0] if single else preds

    def predict_many(self, items: Sequence[Item], batch_size: int = 64,
                     tta: BundleTTA | None = None) -> list[Prediction]:
        """A Prediction per item, in order, decoding and running `batch_size` images at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        tta = self.tta if tta is None else tta
        if tta not in TTA_MODES:
            raise ValueError(f"tta={tta!r} is not one of: {', '.join(TTA_MODES)}")
        out: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            out.extend(self._predict_chunk(items[start:start + batch_size], tta))
        return out

    def _predict_chunk(self, items: Sequence[Item], tta: str) -> list[Prediction]:
        pixels, results = [], []
        for item in items:
            try:
                pixels.append(self.decode(item))
                results.append(None)
            except DECODE_ERRORS as err:  # ValueError included: a refused decompression bomb
                results.append(failed(_name(item), f"{_name(item)}: cannot read image ({err})"))
        if pixels:
            probs = iter(self.probs(Pictures.pack(pixels), tta).cpu())
            for i, item in enumerate(items):
                if results[i] is None:
                    results[i] = self._prediction(next(probs), _name(item))
        return results

    def _prediction(self, p: Tensor, path: str | None) -> Prediction:
        index = int(p.argmax())
        labels = None
        if self.multi_label:
            order = p.argsort(descending=True).tolist()
            labels = [self.vocab[i] for i in order if p[i] > self.thresh]
        return Prediction(self.vocab[index], index, p, path, classes=self.vocab, labels=labels)

    def decode(self, item: Item) -> np.ndarray:
        """An image as the cache stores it: uint8 (h, w, 3) RGB, shorter side `presize`."""
        if isinstance(item, Image.Image):
            # A copy, so the caller's image is not rotated in place. JPEG draft decoding (a
            # shortcut when opening files) does not apply: pass the path for bit-exact pixels.
            return prepare_image(item.copy(), self.view.presize, self.view.max_aspect)
        return load_image_rgb(Path(item), self.view.presize, self.view.max_aspect)

    @torch.no_grad()
    def probs(self, pictures: Pictures, tta: str = "none") -> Tensor:
        """uint8 Pictures (decoded as the cache does) -> class probabilities (B, C) on the device
        (softmax; a sigmoid per class for several labels per image)."""
        x = self.view.transform()(pictures.to(self.device))  # the validation transform exactly
        with autocast(self.device, self.amp_dtype):
            p = probabilities(self.model(x), self.multi_label)
            if tta == "flip":  # the cheapest TTA: average with the mirror image (training flips too)
                p = (p + probabilities(self.model(x.flip(-1)), self.multi_label)) / 2
        return p

    def __repr__(self) -> str:
        return (f"Predictor({len(self.vocab)} classes, size={self.size}, presize={self.view.presize}, "
                f"normalize={self.view.normalize is not None}, tta={self.tta!r}, {self.device})")


def _name(item: Item) -> str | None:
    if isinstance(item, Image.Image):
        return getattr(item, "filename", None) or None
    return str(item)


def write_predictions_csv(preds: Sequence[Prediction], path: str | Path, vocab: Sequence[str]) -> Path:
    """One row per image: path, label (several labels: those above the threshold, space-separated),
    prob (the most probable class's), error, then the probability of every class.

    Written whole or not at all (a full disk keeps the previous file); a file or class name that a
    spreadsheet would run as a formula is written as text (`vivace.files.csv_cell`).
    """
    return write_csv(path, ["path", "label", "prob", "error", *vocab], [_csv_row(p, len(vocab)) for p in preds])


def _csv_row(p: Prediction, n_classes: int) -> list[str | None]:
    if not p.ok:
        return [p.path, "", "", p.error, *([""] * n_classes)]
    label = p.label if p.labels is None else " ".join(p.labels)  # several: those above the threshold
    return [p.path, label, f"{float(p.probs[p.index]):.6f}", "", *(f"{v:.6f}" for v in p.probs.tolist())]
