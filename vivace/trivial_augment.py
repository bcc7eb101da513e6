"""TrivialAugment-Wide (Müller & Hutter, 2021) as batch tensor ops.

Each image gets one operation, drawn uniformly from `OPS`, at a strength drawn uniformly from
`BINS` levels (torchvision's `TrivialAugmentWide` ranges). Images that drew the same operation
are transformed together, so a batch costs at most one pass per operation. Input and output are
float batches (B, 3, H, W) in [0, 1]. Two deliberate differences from torchvision: geometric
operations sample the border by reflection (as the rest of `vivace.augment`) rather than
filling it black, and translation is a fraction of the side (32 px of a 224 px image) rather
than a fixed 32 px, so small training sizes are not shifted by a quarter of the frame.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

BINS = 31
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
MAX_SHEAR = 0.99
MAX_TRANSLATE = 32 / 224  # fraction of the side
MAX_ROTATE = 135.0  # degrees
MAX_ENHANCE = 0.99  # brightness/color/contrast/sharpness factor 1 +- this
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's "L" conversion


def trivial_augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One random operation of random strength per image of a float batch in [0, 1]."""
    n = x.shape[0]
    ops = torch.randint(len(OPS), (n,), generator=generator)
    level = torch.randint(BINS, (n,), generator=generator).float() / (BINS - 1)  # 0, 1/30, ..., 1
    signed = level * torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    out = x.clone()
    for k, name in enumerate(OPS):
        idx = (ops == k).nonzero().flatten()
        if name == "identity" or len(idx) == 0:
            continue
        out[idx] = _apply(name, x[idx], level[idx], signed[idx])
    return out


def _apply(name: str, x: Tensor, level: Tensor, signed: Tensor) -> Tensor:
    """Operation `name` on x (k, 3, H, W) with per-image strengths level in [0, 1] (signed: [-1, 1])."""
    if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        theta = _geometry(name, signed).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    m = signed.to(x.device).view(-1, 1, 1, 1)
    if name == "brightness":
        return _blend(torch.zeros_like(x), x, 1 + MAX_ENHANCE * m)
    if name == "color":
        return _blend(_gray(x).expand_as(x), x, 1 + MAX_ENHANCE * m)
    if name == "contrast":
        return _blend(_gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, 1 + MAX_ENHANCE * m)
    if name == "sharpness":
        return _blend(_smooth(x), x, 1 + MAX_ENHANCE * m)
    lv = level.to(x.device).view(-1, 1, 1, 1)
    if name == "posterize":
        return _posterize(x, 8 - (lv * 6).round())
    if name == "solarize":
        threshold = 1 - lv
        return torch.where(x >= threshold, 1 - x, x)
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return _equalize(x)
    raise ValueError(f"unknown TrivialAugment operation {name!r}")


def _geometry(name: str, s: Tensor) -> Tensor:
    """(k, 2, 3) `affine_grid` matrices: output point -> input point, coordinates in [-1, 1]."""
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    if name == "shear_x":
        rows = (one, MAX_SHEAR * s, zero, zero, one, zero)
    elif name == "shear_y":
        rows = (one, zero, zero, MAX_SHEAR * s, one, zero)
    elif name == "translate_x":  # the side spans 2 units
        rows = (one, zero, 2 * MAX_TRANSLATE * s, zero, one, zero)
    elif name == "translate_y":
        rows = (one, zero, zero, zero, one, 2 * MAX_TRANSLATE * s)
    else:
        theta = math.radians(MAX_ROTATE) * s
        rows = (theta.cos(), -theta.sin(), zero, theta.sin(), theta.cos(), zero)
    return torch.stack(rows, dim=1).view(-1, 2, 3)


def _blend(base: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL ImageEnhance: base + factor * (x - base), clipped to [0, 1]."""
    return (base + factor * (x - base)).clamp_(0, 1)


def _gray(x: Tensor) -> Tensor:
    weights = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)  # (k, 1, H, W)


def _smooth(x: Tensor) -> Tensor:
    """PIL's SMOOTH filter (centre 5, neighbours 1, over 13); the one-pixel border stays as it was."""
    kernel = torch.ones(3, 1, 3, 3, device=x.device, dtype=x.dtype)
    kernel[:, :, 1, 1] = 5
    smooth = F.conv2d(x, kernel / 13, padding=1, groups=3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = smooth[..., 1:-1, 1:-1]
    return out


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top `bits` (k, 1, 1, 1) bits of each 8-bit value."""
    step = torch.pow(2.0, 8 - bits)
    return torch.floor(torch.round(x * 255) / step) * step / 255


def _autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel to span [0, 1]; flat channels stay as they are."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp(min=1e-12), x)


def _equalize(x: Tensor) -> Tensor:
    """Per-channel histogram equalization of 8-bit values (PIL's ImageOps.equalize)."""
    k, c, h, w = x.shape
    q = torch.round(x * 255).long().reshape(k * c, h * w)
    hist = torch.zeros(k * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    # PIL: step = (pixels - count of the last non-empty bin) // 255; lut = (cumsum + step // 2) // step,
    # shifted one bin right; a channel with step 0 is left unchanged.
    last = hist.gather(1, (hist > 0).cumsum(1).argmax(1, keepdim=True))
    step = torch.div(h * w - last, 255, rounding_mode="floor")  # (k*c, 1)
    safe = step.clamp(min=1)
    lut = torch.div(hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], dim=1).clamp_(0, 255)
    out = torch.where(step > 0, lut.gather(1, q), q.float()) / 255
    return out.reshape(k, c, h, w).to(x.dtype)
