"""A loader's per-batch transform: resize or augment the cached uint8 batch, then normalize."""
from __future__ import annotations

from torch import Tensor

from ..augment import TrainAugment, to_unit
from ..views import ValidResize
from ..normalize import Normalize
from ..pictures import Pictures


class Pipeline:
    """A loader's per-batch transform: resize (train: augment) to `size`, then normalize.

    `resize` is a TrainAugment or ValidResize: its `pixels` may stay uint8, and Normalize turns
    uint8 into normalized floats in one pass (the batch is converted to float only once).
    """

    def __init__(self, resize: TrainAugment | ValidResize, normalize: Normalize | None):
        self.resize, self.normalize = resize, normalize

    @property
    def size(self) -> int:
        """The side batches come out at when no size is passed, px."""
        return self.resize.size

    def __call__(self, x: Pictures | Tensor, size: int | None = None) -> Tensor:
        """The batch transformed (training: augmented at `size`, else its own) and normalized."""
        x = self.resize.pixels(x) if size is None else self.resize.pixels(x, size=size)  # uint8 or [0, 1]
        return self.normalize(x) if self.normalize is not None else to_unit(x)
