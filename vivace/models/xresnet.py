"""xresnet: fastai v2's "Bag of Tricks" ResNet-D (He et al. 2019), in plain PyTorch.

Module layout and state_dict keys follow fastai's `XResNet` (an `nn.Sequential`: 3 stem
ConvLayers, max-pool, 4 stages, pool, flatten, dropout, linear), so parameter counts equal
fastai's for the same settings; docs/models.md lists the counts and MACs.
"""

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from vivace.models.layers import (Activation, BlurPool2d, ConvLayer, MaxBlurPool2d, SimpleSelfAttention,
                                  SqueezeExcite, act_layer)

STEM_WIDTHS = (32, 32, 64)
STAGE_WIDTHS = (64, 128, 256, 512)  # before `widen` and the bottleneck expansion


class ResBlock(nn.Module):
    """Residual block act(convpath(x) + idpath(x)) with a ResNet-D shortcut.

    groups > 1 makes the 3x3 convolutions grouped, ResNeXt-style, `base_width` channels per
    group (per 64 of the stage width); reduction > 0 adds squeeze-and-excitation to the branch.
    """

    def __init__(self, expansion: int, ni: int, nf: int, stride: int = 1,
                 act: Activation = "relu", sa: bool = False, blur: bool = False,
                 groups: int = 1, base_width: int = 64, reduction: int = 0, max_blur: bool = False):
        super().__init__()
        nh, ni, nf = nf * base_width // 64 * groups, ni * expansion, nf * expansion
        if expansion == 1:
            convpath = [ConvLayer(ni, nh, 3, stride, act, blur=blur, groups=groups),
                        ConvLayer(nh, nf, 3, act=None, zero_bn=True, groups=groups)]
        else:
            convpath = [ConvLayer(ni, nh, 1, act=act),
                        ConvLayer(nh, nh, 3, stride, act, blur=blur, groups=groups),
                        ConvLayer(nh, nf, 1, act=None, zero_bn=True)]
        if reduction:
            convpath.append(SqueezeExcite(nf, reduction, act))
        if sa:
            convpath.append(SimpleSelfAttention(nf))
        self.convpath = nn.Sequential(*convpath)
        # ResNet-D: pool *before* the 1x1 conv, so the shortcut sees every pixel (a strided
        # 1x1 conv would drop 3 of 4); `max_blur` pools as the leaderboard's MaxBlurPool
        # entry (fastai's pool=MaxPool, each max-pool made MaxBlurPool). An empty
        # Sequential is the identity.
        idpath: list[nn.Module] = []
        if stride != 1:
            idpath.append(MaxBlurPool2d(ni, stride) if max_blur else nn.AvgPool2d(stride, ceil_mode=True))
        if ni != nf:
            idpath.append(ConvLayer(ni, nf, 1, act=None))
        self.idpath = nn.Sequential(*idpath)
        self.act = act_layer(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.convpath(x) + self.idpath(x))


def stem_sizes(stem_widen: float = 1.0) -> tuple[int, ...]:
    """The stem's widths scaled by `stem_widen`, each a multiple of 8 (so of any expansion)."""
    return tuple(max(8, round(w * stem_widen / 8) * 8) for w in STEM_WIDTHS)


def init_cnn(model: nn.Module) -> None:
    """Kaiming-normal (fan_in) weights and zero biases for every Conv2d and Linear, as fastai."""
    # BatchNorms keep the gamma that ConvLayer set (1, or 0 on a branch's last BN) and beta 0.
    # SimpleSelfAttention's Conv1d is initialised in its constructor (it is spectral-normed).
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check(name: str, ok: bool, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed; expected {allowed}")


class XResNet(nn.Sequential):
    """fastai's XResNet: deep 3-conv stem, ResNet-D shortcuts, zero-init residual BNs.

    Args:
        expansion: 1 for BasicBlocks (two 3x3), 4 for Bottlenecks (1x1, 3x3, 1x1).
        layers: blocks per stage, e.g. [3, 4, 6, 3].
        self_attention: SimpleSelfAttention in the last block of the first stage (fastai `sa`).
        blur_pool: anti-aliased downsampling (strided conv -> conv + BlurPool2d, max-pool ->
            MaxBlurPool2d); adds no parameters.
        max_blur_pool: only the pools anti-aliased, as the Imagenette leaderboard's MaxBlurPool
            entries: the stem's max-pool and the strided shortcuts' average pools become
            MaxBlurPool2d; the strided convs stay strided, so it costs little.
        widen: multiplies the stage widths 64/128/256/512 (the stem stays 32/32/64, as fastai).
        stem_widen: multiplies the stem's widths 32/32/64, each rounded to a multiple of 8. At
            half width the stem is 44 % of xresnet18's multiply-adds at 128 px: 0.5 trains 1.7x
            faster on a CPU (docs/BENCHMARKS.md, "Budgets").
        groups, base_width: grouped 3x3 convolutions (ResNeXt: 32 groups of width 4).
        reduction: squeeze-and-excitation in every block with this reduction (0 = none).
    """

    def __init__(self, expansion: int, layers: list[int], n_out: int = 1000, c_in: int = 3,
                 act: Activation = "relu", self_attention: bool = False,
                 blur_pool: bool = False, p_dropout: float = 0.0, widen: float = 1.0,
                 groups: int = 1, base_width: int = 64, reduction: int = 0, max_blur_pool: bool = False,
                 stem_widen: float = 1.0):
        _check("n_out", n_out >= 1, n_out, "an int >= 1")
        _check("c_in", c_in >= 1, c_in, "an int >= 1")
        _check("p_dropout", 0.0 <= p_dropout < 1.0, p_dropout, "a float in [0, 1)")
        _check("widen", int(STAGE_WIDTHS[0] * widen) >= 1, widen, "a float >= 1/64")
        _check("expansion", expansion in (1, 4), expansion, "1 or 4")
        _check("layers", len(layers) == 4 and min(layers) >= 1, layers, "4 block counts >= 1")
        _check("groups", groups >= 1, groups, "an int >= 1")
        _check("base_width", base_width >= 1, base_width, "an int >= 1")
        _check("reduction", reduction >= 0, reduction, "an int >= 0")
        _check("stem_widen", stem_widen > 0, stem_widen, "a float > 0")
        stem_widths = stem_sizes(stem_widen)
        sizes = (c_in, *stem_widths)
        stem = [ConvLayer(sizes[i], sizes[i + 1], 3, stride=2 if i == 0 else 1, act=act,
                          blur=blur_pool) for i in range(3)]
        if blur_pool or max_blur_pool:
            pool: nn.Module = MaxBlurPool2d(stem_widths[-1], stride=2)
        else:
            pool = nn.MaxPool2d(3, stride=2, padding=1)
        # ResBlock multiplies widths by `expansion`: 64 // expansion makes stage 1's input 64.
        widths = [stem_widths[-1] // expansion] + [int(w * widen) for w in STAGE_WIDTHS]
        block = dict(act=act, blur=blur_pool, groups=groups, base_width=base_width, reduction=reduction,
                     max_blur=max_blur_pool)
        stages = [self._make_stage(expansion, widths[i], widths[i + 1], n_blocks, stride=1 if i == 0 else 2,
                                   sa=self_attention and i == 0, **block)
                  for i, n_blocks in enumerate(layers)]
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(p_dropout),
                nn.Linear(widths[-1] * expansion, n_out)]
        super().__init__(*stem, pool, *stages, *head)
        # The constructor arguments as plain data: `XResNet(**model.config)` rebuilds it (export).
        self.config = dict(expansion=expansion, layers=list(layers), n_out=n_out, c_in=c_in, act=act,
                           self_attention=self_attention, blur_pool=blur_pool, p_dropout=p_dropout,
                           widen=widen, groups=groups, base_width=base_width, reduction=reduction,
                           max_blur_pool=max_blur_pool, stem_widen=stem_widen)
        init_cnn(self)

    def __getitem__(self, idx: int | slice) -> nn.Module:
        # nn.Sequential slices by calling type(self)(...), which XResNet's signature does not
        # accept; a slice (e.g. the body, model[:-4]) is a plain Sequential with the same names.
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """fastai's split of an xresnet for discriminative learning rates and freezing: the stem's
        three convolutions, the body (max-pool and the four stages), the head (pool to linear)."""
        return [("stem", self[:3]), ("body", self[3:-4]), ("head", self[-4:])]

    @staticmethod
    def _make_stage(expansion: int, ni: int, nf: int, n_blocks: int, stride: int, sa: bool,
                    **block: Any) -> nn.Sequential:
        # Only the first block changes width and resolution; self-attention goes in the last.
        return nn.Sequential(*[
            ResBlock(expansion, ni if i == 0 else nf, nf, stride=stride if i == 0 else 1,
                     sa=sa and i == n_blocks - 1, **block)
            for i in range(n_blocks)])


def xresnet18(**kwargs: Any) -> XResNet:
    """xresnet18: BasicBlocks [2, 2, 2, 2]; kwargs go to `XResNet`."""
    return XResNet(1, [2, 2, 2, 2], **kwargs)


def xresnet34(**kwargs: Any) -> XResNet:
    """xresnet34: BasicBlocks [3, 4, 6, 3]; kwargs go to `XResNet`."""
    return XResNet(1, [3, 4, 6, 3], **kwargs)


def xresnet50(**kwargs: Any) -> XResNet:
    """xresnet50: Bottlenecks [3, 4, 6, 3]; kwargs go to `XResNet`."""
    return XResNet(4, [3, 4, 6, 3], **kwargs)


def xresnet101(**kwargs: Any) -> XResNet:
    """xresnet101: Bottlenecks [3, 4, 23, 3]; kwargs go to `XResNet`."""
    return XResNet(4, [3, 4, 23, 3], **kwargs)


def xresnet152(**kwargs: Any) -> XResNet:
    """xresnet152: Bottlenecks [3, 8, 36, 3]; kwargs go to `XResNet`."""
    return XResNet(4, [3, 8, 36, 3], **kwargs)


def xse_resnext50(**kwargs: Any) -> XResNet:
    """xse_resnext50: SE-ResNeXt-50 32x4d on the xresnet stem and shortcuts (fastai's leaderboard
    model of Jan 2020); kwargs go to `XResNet`."""
    return XResNet(4, [3, 4, 6, 3], **{"groups": 32, "base_width": 4, "reduction": 16, **kwargs})


def arch_label(config: dict[str, Any]) -> str:
    """A short name for an XResNet config (`model.config`): "xresnet50", "xse_resnext50"."""
    layers, expansion = config.get("layers", []), config.get("expansion", 1)
    depth = 2 + sum(layers) * (2 if expansion == 1 else 3)  # convs per block, plus stem and head
    grouped = config.get("groups", 1) > 1 or config.get("reduction", 0) > 0
    return f"{'xse_resnext' if grouped else 'xresnet'}{depth}"


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _macs_hook(counter: list[int]):
    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        n = out.shape[0]
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            per_out = (m.in_channels // m.groups) * m.weight[0, 0].numel()
            counter[0] += out.numel() // n * per_out
        elif isinstance(m, nn.Linear):
            counter[0] += out.numel() // n * m.in_features
        elif isinstance(m, BlurPool2d):
            counter[0] += out.numel() // n * 9  # depthwise 3x3
        elif isinstance(m, SimpleSelfAttention):
            c, hw = out.shape[1], out[0, 0].numel()
            counter[0] += 2 * c * c * hw  # the two bmm's; its Conv1d is hooked on its own
    return hook


def count_macs(model: nn.Module, size: int, c_in: int = 3) -> int:
    """Multiply-adds of one forward pass on one (c_in, size, size) image.

    Counts convolutions, linear layers, blur-pools and self-attention matmuls; BN,
    activations, pooling and additions are not counted (the usual convention). FLOPs ~ 2 * MACs.
    """
    counter = [0]
    hook = _macs_hook(counter)
    kinds = (nn.Conv1d, nn.Conv2d, nn.Linear, BlurPool2d, SimpleSelfAttention)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, c_in, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counter[0]
