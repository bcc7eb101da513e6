"""Building blocks for xresnet: conv-BN-act, activations, simple self-attention, blur pooling."""

import functools
import os
import shutil
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

Activation = Literal["relu", "mish", "silu"]


def mish_by_sigmoid(x: Tensor) -> Tensor:
    """Mish as x * (1 - u^2) / (1 + u^2), u = sigmoid(-x): equal to x * tanh(softplus(x)), with one
    exponential instead of three transcendentals, and finite at both ends (u stays in [0, 1])."""
    u2 = torch.sigmoid(-x).square()
    return x * (1 - u2) / (1 + u2)


@functools.cache
def fused_mish() -> Callable[[Tensor], Tensor] | None:
    """`mish_by_sigmoid` compiled into one C++ loop (forward and backward), or None without a compiler.

    PyTorch's own CPU kernel for F.mish is slow: forward + backward took ~2.7x this one's time
    (docs/BENCHMARKS.md). Compiled
    lazily, once per process (a few seconds; dynamic shapes, so progressive resizing does not
    recompile); Inductor builds it with the system's C++ compiler, so without one F.mish stays.
    """
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return None
    return torch.compile(mish_by_sigmoid, dynamic=True)


class Mish(nn.Module):
    """Mish activation, x * tanh(softplus(x)) (Misra 2019); on a CPU, `fused_mish`."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():  # inside a compiled model (--compile): Inductor fuses it there
            return mish_by_sigmoid(x)
        fused = fused_mish() if x.device.type == "cpu" else None
        return fused(x) if fused is not None else F.mish(x)


def _relu() -> nn.Module:
    # In place is safe here: every ReLU follows a BatchNorm or a residual sum, whose
    # backward does not need the overwritten output; it saves one activation tensor.
    return nn.ReLU(inplace=True)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": _relu,
    "mish": Mish,
    "silu": nn.SiLU,
}


def act_layer(name: str) -> nn.Module:
    """A fresh activation module by name ('relu', 'mish' or 'silu')."""
    if name not in ACTIVATIONS:
        raise ValueError(f"act={name!r} is not known; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): scale each channel by a gate computed from the
    globally pooled features, as fastai's SEModule (hidden width ch / reduction, rounded to 8)."""

    def __init__(self, channels: int, reduction: int = 16, act: Activation = "relu"):
        super().__init__()
        hidden = _round_to_8(channels / reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = act_layer(act)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.expand(self.act(self.reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * gate.sigmoid()


def _round_to_8(v: float) -> int:
    """Nearest multiple of 8, at least 8 and not below 90 % of v (timm/fastai `make_divisible`)."""
    rounded = max(8, int(v + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * v else rounded


class BlurPool2d(nn.Module):
    """Anti-aliased downsampling: a fixed 3x3 binomial blur applied with a stride (Zhang 2019)."""

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        self.channels, self.stride = channels, stride
        k = torch.tensor([1.0, 2.0, 1.0])
        filt = (k[:, None] * k[None, :]) / 16  # (3, 3), sums to 1
        # A buffer, not a parameter: the filter is fixed, so parameter counts do not change.
        # Not persistent: it is rebuilt from the constructor, so checkpoints do not carry it.
        self.register_buffer("filt", filt.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # Zero padding inside the conv (as kornia's MaxBlurPool) instead of a separate
        # reflect pad: no extra copy of the activation, and any input size >= 1 works.
        return F.conv2d(x, self.filt, stride=self.stride, padding=1, groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, stride={self.stride}"


class MaxBlurPool2d(nn.Sequential):
    """A 3x3 max-pool at stride 1, then the blurred subsample (Zhang 2019's MaxBlurPool).

    The output has ceil(H / stride) rows, as the max-pool and the ceil-mode average pool it
    replaces.
    """

    def __init__(self, channels: int, stride: int = 2):
        super().__init__(nn.MaxPool2d(3, stride=1, padding=1), BlurPool2d(channels, stride))


class Conv2d(nn.Conv2d):
    """nn.Conv2d, in fp32 where oneDNN's bf16 kernel fails: a strided conv of a 1x1 input on a CPU.

    Under CPU bf16 autocast (torch 2.13, AMX) that case gives non-finite weight gradients in most
    steps (tests/test_models.py); it arises in the last stage of images under 32 px. Its output
    is one pixel, so the fp32 detour costs nothing measurable. Same parameters and state_dict keys.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type == "cpu" and self.stride != (1, 1) and x.shape[-2:] == (1, 1)
                and torch.is_autocast_enabled("cpu")):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class ConvLayer(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation -> optional blur-pool.

    With `blur=True` and `stride > 1` the conv runs at stride 1 and a `BlurPool2d` after the
    activation does the downsampling, as in Zhang's anti-aliased CNNs.
    """

    def __init__(self, ni: int, nf: int, ks: int = 3, stride: int = 1,
                 act: Activation | None = "relu", zero_bn: bool = False, blur: bool = False,
                 groups: int = 1):
        blur = blur and stride > 1
        conv = Conv2d(ni, nf, ks, stride=1 if blur else stride, padding=ks // 2, bias=False, groups=groups)
        bn = nn.BatchNorm2d(nf)
        # gamma = 0 on the last BN of a residual branch: each block starts as the identity.
        nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
        layers = [conv, bn]
        if act is not None:
            layers.append(act_layer(act))
        if blur:
            layers.append(BlurPool2d(nf, stride))
        super().__init__(*layers)


class SimpleSelfAttention(nn.Module):
    """fastai's SimpleSelfAttention: x + gamma * (x x^T) (W x), gamma starting at 0."""

    def __init__(self, n_in: int):
        super().__init__()
        conv = nn.Conv1d(n_in, n_in, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        self.conv = spectral_norm(conv)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        # fp16 would overflow: (x x^T) sums over all H*W positions, then over C channels
        # (~1e5 at 224 px), and 0 * inf = nan even while gamma is 0. So fp16 computes in fp32.
        # bf16 has fp32's range: it stays under autocast, where the three matmuls run at
        # bf16 speed.
        if _computes_in_fp16(x):
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = self.attend(x.flatten(2).float()).to(x.dtype)
        else:
            out = self.attend(x.flatten(2))
        out = out.view(x.shape)  # attend returns a new contiguous (B, C, N) tensor
        if x.is_contiguous(memory_format=torch.channels_last):
            # Hand the next conv the layout it got before, so it does not switch kernels.
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def attend(self, flat: Tensor) -> Tensor:
        """flat + gamma * (flat flat^T) conv(flat), on (B, C, N)."""
        convx = self.conv(flat)
        xxt = torch.bmm(flat, flat.transpose(1, 2))  # (B, C, C)
        o = torch.bmm(xxt, convx)  # (B, C, N)
        return self.gamma.to(o.dtype) * o + flat


def _computes_in_fp16(x: Tensor) -> bool:
    device = x.device.type
    autocast_fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    return x.dtype == torch.float16 or autocast_fp16
