"""Models by name: `create_model("xresnet50", n_out=10)`."""

from typing import Any, Callable

from torch import nn

from vivace.models.layers import (BlurPool2d, Conv2d, ConvLayer, MaxBlurPool2d, Mish, SimpleSelfAttention,
                                  SqueezeExcite, act_layer)
from vivace.models.xresnet import (ResBlock, XResNet, count_macs, count_params, init_cnn,
                                   xresnet18, xresnet34, xresnet50, xresnet101, xresnet152, xse_resnext50)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "xresnet18": xresnet18,
    "xresnet34": xresnet34,
    "xresnet50": xresnet50,
    "xresnet101": xresnet101,
    "xresnet152": xresnet152,
    "xse_resnext50": xse_resnext50,
}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as `name`; kwargs (n_out, c_in, act, ...) go to it."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not known; choose one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS", "create_model", "XResNet", "ResBlock", "init_cnn", "count_macs", "count_params",
    "xresnet18", "xresnet34", "xresnet50", "xresnet101", "xresnet152", "xse_resnext50",
    "Conv2d", "ConvLayer", "Mish", "SimpleSelfAttention", "SqueezeExcite", "BlurPool2d", "MaxBlurPool2d",
    "act_layer",
]
