"""The evaluation view: how a trained model is shown an image, as one value.

Validation, TTA, the export bundle and `Predictor` all read the same `EvalView` (from
`DataLoaders.eval_view`, or from a bundle), so they cannot drift apart: the crop side, the
central fraction shown, squash or centre square, the cache's presize and aspect bound, and
the normalization statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..views import ValidResize
from ..normalize import Normalize
from .pipeline import Pipeline


@dataclass(frozen=True)
class EvalView:
    """Settings of the validation transform: decode (presize, max_aspect), ValidResize, Normalize."""

    size: int  # the side the model sees, px
    crop: float  # the central fraction of each side shown at `size` (ValidResize)
    square: bool  # True: cut the central square (fastai's Resize); False: squash the whole image
    presize: int  # the cached (decoded) images' shorter side, px
    max_aspect: float  # longest / shortest side kept whole when decoding (1 = centre squares)
    normalize: Normalize | None  # the training statistics; None = trained unnormalized

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 1 <= self.size <= self.presize:
            raise ValueError(f"size={self.size!r} must be an int in [1, {self.presize}] (the cache's presize): "
                             f"to evaluate larger, rebuild the data with a larger presize")

    def at(self, size: int | None) -> EvalView:
        """The same view at another size (None: this one); ValueError beyond the presize."""
        return self if size is None else replace(self, size=size)

    def transform(self) -> Pipeline:
        """uint8 Pictures -> the normalized float batch (B, 3, size, size) the model sees: validation's."""
        return Pipeline(ValidResize(self.size, self.crop, self.square), self.normalize)

    def bundle_fields(self) -> dict[str, Any]:
        """The export bundle's fields for this view (JSON-ready)."""
        norm = self.normalize.as_dict() if self.normalize is not None else None
        return {"size": int(self.size), "crop": float(self.crop), "square": bool(self.square),
                "presize": int(self.presize), "max_aspect": float(self.max_aspect), "normalize": norm}

    @classmethod
    def from_bundle(cls, info: dict[str, Any]) -> EvalView:
        """The view of a checked bundle's info; fields older bundles lack take their old meaning."""
        norm = info["normalize"]
        return cls(info["size"], info.get("crop", 1.0),  # before valid_crop: the whole square
                   info.get("square", False),  # before 2026-12-05: squashed
                   info["presize"], info.get("max_aspect", 1.0),  # before 2026-12-05: centre squares
                   Normalize(norm["mean"], norm["std"]) if norm is not None else None)
