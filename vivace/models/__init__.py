"""Models by name: `create_model("xresnet50", n_out=10)`, and the Recipe's model fields (`ModelSpec`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from torch import nn

from vivace.flags import Range, knob
from vivace.models.layers import (BlurPool2d, Conv2d, ConvLayer, MaxBlurPool2d, Mish, SimpleSelfAttention,
                                  SqueezeExcite, act_layer)
from vivace.models.xresnet import (ResBlock, XResNet, arch_label, count_macs, count_params, init_cnn, stem_sizes,
                                   xresnet18, xresnet34, xresnet50, xresnet101, xresnet152, xse_resnext50)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "xresnet18": xresnet18,
    "xresnet34": xresnet34,
    "xresnet50": xresnet50,
    "xresnet101": xresnet101,
    "xresnet152": xresnet152,
    "xse_resnext50": xse_resnext50,
}


Activation = Literal["relu", "mish", "silu"]


@dataclass
class ModelSpec:
    """The Recipe's model: `create_model`'s `arch` and the keyword arguments every model in MODELS takes."""

    arch: str = knob("xresnet18", "model name from vivace.models.MODELS")
    widen: float = knob(1.0, "channel width multiplier (0.5 = half-width)", range=Range(0.0, low_open=True))
    stem_widen: float = knob(1.0, "the stem's width multiplier (widen leaves the stem at 32/32/64, as fastai)",
                             range=Range(0.0, low_open=True))
    act: Activation = knob("relu", "activation: relu, mish or silu")
    self_attention: bool = knob(False, "fastai's simple self-attention in the model")
    blur_pool: bool = knob(False, "anti-aliased downsampling: strided convs and pools")
    max_blur_pool: bool = knob(False, "only the pools anti-aliased (MaxBlurPool, as the leaderboard's)")


def create_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as `arch`; kwargs (n_out, c_in, act, ...) go to it (`XResNet`)."""
    if arch not in MODELS:
        raise ValueError(f"arch={arch!r} is not one of: {', '.join(MODELS)}")
    return MODELS[arch](**kwargs)


def layer_groups(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's parts, input to output, that train at their own rate (fine-tuning): an XResNet's
    stem, body and head; one group for any other model."""
    return model.layer_groups() if isinstance(model, XResNet) else [("model", model)]


__all__ = [
    "MODELS", "ModelSpec", "create_model", "layer_groups", "arch_label", "XResNet", "ResBlock", "init_cnn",
    "stem_sizes", "count_macs", "count_params",
    "xresnet18", "xresnet34", "xresnet50", "xresnet101", "xresnet152", "xse_resnext50",
    "Conv2d", "ConvLayer", "Mish", "SimpleSelfAttention", "SqueezeExcite", "BlurPool2d", "MaxBlurPool2d",
    "act_layer",
]
