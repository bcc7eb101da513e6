"""The book's inference handles: `learn.predict`, `learn.show_results`, `load_learner`.

`predict` is `vivace.inference.Predictor` (the validation transform, exactly) answering in
fastai's shape, `(label, index, probs)`; `load_learner` wraps the Predictor of an export bundle
so that the loaded object answers the same way and keeps the book's `learn.dls.vocab`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from vivace.data.names import display_names
from vivace.export import load
from vivace.inference import Item, Predictor
from vivace.show import image_grid

CORRECT_COLOR, WRONG_COLOR = "green", "red"  # fastai's show_results title colours

# The names `vivace.runtime.autocast_dtype` maps back to each dtype (None: fp32).
_AMP_NAMES = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}


def learner_predictor(learn: Any) -> Predictor:
    """A Predictor on the Learner's model, device, precision and current validation preprocessing.

    Built per call, so a new `learn.dls` (progressive resizing) is followed. The Predictor puts
    the model in eval mode and channels_last (a no-op for a Learner built with channels_last=True,
    the default); training puts it back in train mode.
    """
    return Predictor(learn.eval_model, learn.dls.vocab, learn.dls.eval_view, device=learn.device,
                     amp=_AMP_NAMES[learn.amp_dtype], multi_label=learn.dls.multi_label)


def predict_item(predictor: Predictor, item: Item) -> tuple[str, Tensor, Tensor]:
    """fastai's `predict` answer for one image: (label, index as a 0-d tensor, probabilities (C,))."""
    if not _is_one_image(item):
        got = f"the folder {item}" if isinstance(item, (str, Path)) else f"a {type(item).__name__}"
        raise ValueError(f"predict takes one image (a file path or a PIL image), got {got}; for many "
                         "images use vivace.export.load(bundle).predict(paths) or `vivace predict`")
    pred = predictor.predict(item, tta="none")  # raises ValueError naming the file if it cannot be read
    return pred.label, torch.tensor(pred.index), pred.probs


def _is_one_image(item: Any) -> bool:
    """A PIL image, or a path that is not a folder (a missing file fails later, naming it)."""
    return isinstance(item, Image.Image) or (isinstance(item, (str, Path)) and not Path(item).is_dir())


@dataclass(frozen=True)
class InferenceDataLoaders:
    """What a loaded Learner keeps of its DataLoaders: the classes (`learn.dls.vocab`)."""

    vocab: list[str]

    @property
    def c(self) -> int:
        return len(self.vocab)


class InferenceLearner:
    """What `load_learner` returns: `predict(item)` and `dls.vocab`, as a loaded fastai Learner.

    `predictor` is the bundle's `vivace.inference.Predictor`, for lists, folders and flip TTA.
    """

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.dls = InferenceDataLoaders(list(predictor.vocab))

    @property
    def model(self) -> nn.Module:
        return self.predictor.model

    def predict(self, item: Item) -> tuple[str, Tensor, Tensor]:
        """(label, index, probs) for one image file or PIL image, preprocessed as validation."""
        return predict_item(self.predictor, item)

    def __repr__(self) -> str:
        return f"InferenceLearner({self.predictor!r})"


def load_learner(fname: str | Path, cpu: bool = True) -> InferenceLearner:
    """Load what `learn.export()` wrote (safetensors, nothing unpickled), ready to `predict`."""
    return InferenceLearner(load(fname, device="cpu" if cpu else None))


def first_items(dl: Any, n: int) -> tuple[Tensor, Tensor]:
    """The first n inputs and labels a loader yields, read batch by batch."""
    xs, ys, seen = [], [], 0
    for x, y in dl:
        xs.append(x)
        ys.append(y)
        seen += len(x)
        if seen >= n:
            break  # the rest of the loader is not needed
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def show_results(learn: Any, ds_idx: int = 1, dl: Any = None, max_n: int = 9, ncols: int = 3,
                 path: str | Path | None = None):
    """fastai's `show_results`: images titled actual, then predicted, green when right and red when wrong.

    The first `max_n` items of `dl` (default: the validation loader, ds_idx=1; the training
    loader, augmented, for ds_idx=0). Returns a matplotlib Figure, saved as PNG to `path` if given.
    """
    if max_n < 1:
        raise ValueError(f"show_results(max_n={max_n}): need at least 1 image")
    if dl is None:
        if ds_idx not in (0, 1):
            raise ValueError(f"show_results(ds_idx={ds_idx}): 0 is the training set, 1 the validation set")
        dl = learn.dls.valid if ds_idx == 1 else learn.dls.train
    x, y = first_items(dl, max_n)
    logits, targets = learn.get_preds(dl=[(x, y)])  # the Learner's own evaluation of these images
    preds = logits.argmax(dim=-1)
    names = display_names(learn.dls.vocab)
    titles = [f"{names[a]}\n{names[p]}" for a, p in zip(targets.tolist(), preds.tolist())]
    fig = image_grid(x.cpu(), titles, normalize=learn.dls.normalize, ncols=ncols)
    for ax, right in zip(fig.axes, (preds == targets).tolist()):
        ax.title.set_color(CORRECT_COLOR if right else WRONG_COLOR)
    if path is not None:
        fig.savefig(Path(path), format="png")
    return fig
