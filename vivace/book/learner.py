"""The book's Learner: vivace's loop with fastai's defaults, plus the loss, callback and loading names."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor, nn

from vivace import learner, screen
from vivace.callbacks import Callback
from vivace.techniques import Mixup
from vivace.inference import Item
from vivace.losses import CrossEntropy, MultiLabelBCE
from vivace.export import export_learner
from vivace.lr_finder import LRFindResult, lr_find
from vivace.models import create_model, layer_groups
from vivace.normalize import Normalize, imagenet_stats
from vivace.runtime import reuse_freed_memory
from vivace.transfer import read_source, save_weights, start_from
from vivace.tta import tta

from .inference import learner_predictor, predict_item, show_results

FASTAI_WD = 0.01  # fastai's Adam default: true (decoupled) weight decay, none on BatchNorm and biases

CrossEntropyLossFlat = CrossEntropy  # flattens leading dims like fastai's, and also takes soft targets
MixUp = Mixup  # fastai's spelling; `MixUp(0.4)` is alpha, as there


class Learner(learner.Learner):
    """vivace's Learner with fastai's defaults: AdamW, weight decay 0.01, CrossEntropyLossFlat, no metrics.

    `path`/`model_dir`: where `save` and `load` keep weights, as fastai's. Other keyword arguments
    (splitter, amp, channels_last, compile, ...) go to `vivace.learner.Learner`.
    """

    def __init__(self, dls, model: nn.Module, loss_func: nn.Module | Callable | None = None,
                 opt_func: str | Callable = "adamw", *,
                 cbs: Callback | type | Iterable[Callback | type] | None = None,
                 metrics: Callable | Sequence[Callable] | None = None, wd: float = FASTAI_WD,
                 path: str | Path = ".", model_dir: str | Path = "models", **kwargs: Any):
        if loss_func is None:  # as fastai takes it from the target block: BCE for a MultiCategoryBlock
            loss_func = MultiLabelBCE() if dls.multi_label else CrossEntropyLossFlat()
        super().__init__(dls, model, loss_func=loss_func,
                         metrics=metrics, cbs=cbs, optimizer=opt_func, weight_decay=wd, **kwargs)
        reuse_freed_memory()  # the book's sessions get `vivace train`'s allocator setting (runtime.py)
        self.path, self.model_dir = Path(path), Path(model_dir)

    @property
    def opt_func(self) -> str | Callable:
        """fastai's name for the optimizer the Learner builds (`optimizer`)."""
        return self.optimizer

    @property
    def wd(self) -> float:
        """fastai's name for the weight decay (`weight_decay`)."""
        return self.weight_decay

    @property
    def n_classes(self) -> int:
        """The model's outputs (what Mixup one-hot encodes): the book's `xresnet50()` has 1000."""
        config = getattr(self.model, "config", None)
        return config["n_out"] if isinstance(config, dict) and "n_out" in config else len(self.dls.vocab)

    def save(self, file: str) -> Path:
        """fastai's save: the model's weights to path/model_dir/file.safetensors, with the classes and
        statistics (tensors only, never pickled, so it also serves as `vivace train --init` and
        `vision_learner(pretrained=...)`); the optimizer is not saved."""
        normalize = self.dls.normalize.as_dict() if self.dls.normalize is not None else None
        return save_weights(self.model, self.path / self.model_dir / f"{file}.safetensors", self.dls.vocab, normalize)

    def load(self, file: str) -> Learner:
        """fastai's load: the weights `save` wrote under this name (every tensor must fit the model)."""
        self.model.load_state_dict(load_file(str(self.path / self.model_dir / f"{file}.safetensors")))
        return self

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                show_plot: bool = True) -> SuggestedLRs:
        """vivace's LR sweep; `.valley` is fastai's suggestion (and vivace's `suggestion`).

        In a notebook it shows its plot, as fastai's does (`show_plot`); a script shows nothing.
        """
        found = lr_find(self, start_lr, end_lr, num_it)
        if show_plot:
            screen.display_in_notebook(found.plot)  # what is returned shows as text: the plot shows once
        return SuggestedLRs(found.lrs, found.losses, found.suggestion, found.valley, found.steep, found.minimum)

    def tta(self, dl: Any = None, n: int = 4, beta: float | None = 0.25,
            use_max: bool = False) -> tuple[Tensor, Tensor]:
        """fastai's test-time augmentation: probabilities and targets (see `vivace.tta.tta`)."""
        return tta(self, dl, n=n, beta=beta, use_max=use_max)

    def export(self, path: str | Path = "export.vivace") -> Path:
        """A safe, self-contained model bundle at `path` (see `vivace.export.export_learner`)."""
        return export_learner(self, path)

    def predict(self, item: Item) -> tuple[str, Tensor, Tensor]:
        """fastai's predict: (label, index, probs) for one image file or PIL image, as validation sees it."""
        return predict_item(learner_predictor(self), item)

    def show_results(self, ds_idx: int = 1, dl: Any = None, max_n: int = 9, ncols: int = 3,
                     path: str | Path | None = None):
        """The first `max_n` images titled actual/predicted (green: right, red: wrong): a Figure."""
        return show_results(self, ds_idx, dl, max_n, ncols, path)


@dataclass(repr=False)
class SuggestedLRs(LRFindResult):
    """An LR sweep printed as fastai prints it: `valley` (the suggestion), `steep`, `minimum`, `plot()`."""

    def __repr__(self) -> str:
        return f"SuggestedLRs(valley={self.valley:.3g}, steep={self.steep:.3g}, minimum={self.minimum:.3g})"


def vision_learner(dls, arch: str | Callable[..., nn.Module], pretrained: bool | str | Path = False,
                   normalize: bool = True, n_out: int | None = None, **kwargs: Any) -> Learner:
    """fastai's vision_learner: `arch` (a model function such as xresnet50, or its name) built for the
    data's classes and split into stem, body and head, which `freeze`, `unfreeze`, `fine_tune` and
    learning-rate slices act on.

    `pretrained`: weights to start from, a path (an export bundle, a run folder, or a state-dict
    file: `vivace.transfer.start_from`); the body is then frozen, as fastai's. vivace downloads
    none: True is refused. With `normalize`, pretrained weights and data built without a Normalize,
    the pretrained model's statistics (else ImageNet's) are added, as fastai adds them. Other keyword arguments
    go to `Learner`.
    """
    if pretrained is True:
        raise ValueError("vivace downloads no pretrained weights: pass pretrained=PATH, an export bundle, a run "
                         "folder or a state-dict file (train one with `vivace train`)")
    n_out = n_out or len(dls.vocab)
    model = create_model(arch, n_out=n_out) if isinstance(arch, str) else arch(n_out=n_out)
    if pretrained:
        print(start_from(model, str(pretrained), "final", dls.vocab), flush=True)
    if pretrained and normalize and dls.normalize is None:
        dls.set_normalize(Normalize(*(read_source(pretrained).stats or imagenet_stats)))
    learn = Learner(dls, model, splitter=layer_groups, **kwargs)
    if pretrained:
        learn.freeze()
    return learn


cnn_learner = vision_learner  # fastai's earlier name
