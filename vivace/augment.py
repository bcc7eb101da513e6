"""Batch augmentation on the device: one resample per image for crop+flip+affine+warp, then lighting.

Coordinates follow `F.grid_sample(align_corners=False)`: x, y in [-1, 1] span the image edge to edge.
A 3x3 matrix maps an *output* point (x, y, 1) to the *input* point it samples (a homography).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .flags import Range, check_fields, knob
from .pictures import Pictures, as_pictures
from .trivial_augment import trivial_augment

CHANNELS_LAST = torch.channels_last


def random_resized_crop_params(sizes: Tensor, scale: tuple[float, float] = (0.35, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3),
                               generator: torch.Generator | None = None, attempts: int = 10) -> Tensor:
    """fastai's RandomResizedCrop boxes for images of (height, width) `sizes` (n, 2), in pixels.

    Returns (n, 4) boxes (cx, cy, w, h): centre in [-1, 1], width/height as fractions of the
    image's. As fastai's (fastai/vision/augment.py): up to 10 draws of an area fraction in
    `scale` and a log-uniform width/height ratio in `ratio`, rounded to whole pixels; the first
    that fits wins, placed uniformly; if none fits, the centre crop at the nearest allowed ratio.
    All draws are made for every image at once, so there is no per-image Python.
    """
    h, w = sizes.double().unbind(dim=1)  # (n,) each
    n = len(h)
    area = torch.empty(n, attempts, dtype=torch.float64).uniform_(*scale, generator=generator) * (w * h)[:, None]
    log_ratio = torch.empty(n, attempts, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    nw = (area * log_ratio.exp()).sqrt().round().clamp(min=1)
    nh = (area / log_ratio.exp()).sqrt().round().clamp(min=1)
    fits = (nw <= w[:, None]) & (nh <= h[:, None])
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first attempt that fits
    found = fits.any(dim=1)
    crop_w = torch.where(found, nw.gather(1, first)[:, 0], _fallback_width(w, h, ratio))
    crop_h = torch.where(found, nh.gather(1, first)[:, 0], _fallback_height(w, h, ratio))
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    left = torch.where(found, (u[:, 0] * (w - crop_w + 1)).floor(), ((w - crop_w) / 2).floor())
    top = torch.where(found, (u[:, 1] * (h - crop_h + 1)).floor(), ((h - crop_h) / 2).floor())
    return _pixel_boxes_to_unit(left, top, crop_w, crop_h, w, h)


def random_square_boxes(sizes: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """fastai's `Resize(size)` in training: each image's largest square, at a uniformly random place
    along its longer side (whole pixels). (n, 4) boxes as `random_resized_crop_params`'."""
    h, w = sizes.double().unbind(dim=1)
    side = torch.minimum(h, w)
    u = torch.rand(len(h), 2, dtype=torch.float64, generator=generator)
    return _pixel_boxes_to_unit((u[:, 0] * (w - side)).round(), (u[:, 1] * (h - side)).round(), side, side, w, h)


def _pixel_boxes_to_unit(left: Tensor, top: Tensor, crop_w: Tensor, crop_h: Tensor, w: Tensor, h: Tensor) -> Tensor:
    """Pixel boxes (left, top, width, height) of (h, w) images -> (cx, cy, w, h) with the centre in [-1, 1]."""
    boxes = torch.stack([(2 * left + crop_w) / w - 1, (2 * top + crop_h) / h - 1, crop_w / w, crop_h / h], dim=1)
    return boxes.float()


def _fallback_width(w: Tensor, h: Tensor, ratio: tuple[float, float]) -> Tensor:
    return torch.where(w / h > ratio[1], (h * ratio[1]).floor(), w)  # too wide: cut the width


def _fallback_height(w: Tensor, h: Tensor, ratio: tuple[float, float]) -> Tensor:
    return torch.where(w / h < ratio[0], (w / ratio[0]).floor(), h)  # too tall: cut the height


def _affine(a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor) -> Tensor:
    zero = torch.zeros_like(a)  # per-image coefficients -> (n, 3, 3) [[a, b, c], [d, e, f], [0, 0, 1]]
    return torch.stack([a, b, c, d, e, f, zero, zero, torch.ones_like(a)], dim=1).view(-1, 3, 3)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    return torch.empty(n).uniform_(lo, hi, generator=generator)  # (n,) on the CPU


def _mask(n: int, p: float, generator: torch.Generator | None) -> Tensor:
    return (torch.rand(n, generator=generator) < p).float()  # (n,) Bernoulli(p) as 0/1


def flip_signs(n: int, flip_p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """(n,) -1 for images to mirror horizontally, +1 for the others."""
    return 1 - 2 * _mask(n, flip_p, generator)


def crop_matrices(boxes: Tensor, signs: Tensor) -> Tensor:
    """(n, 3, 3) matrices sampling each crop box, mirrored where signs is -1."""
    cx, cy, w, h = boxes.unbind(dim=1)
    zero = torch.zeros_like(cx)
    return _affine(w * signs, zero, cx, zero, h, cy)


def rotate_zoom_matrices(n: int, max_rotate: float = 10.0, max_zoom: float = 1.1, p_affine: float = 0.75,
                         generator: torch.Generator | None = None) -> Tensor:
    """(n, 3, 3) fastai rotation and zoom, each applied with probability p_affine."""
    zero = torch.zeros(n)
    rad = math.radians(max_rotate)
    theta = _uniform(n, -rad, rad, generator) * _mask(n, p_affine, generator)
    rotate = _affine(theta.cos(), -theta.sin(), zero, theta.sin(), theta.cos(), zero)
    # fastai zoom: sample a 1/z window, its centre anywhere that keeps it inside the frame.
    z = _uniform(n, 1.0, max_zoom, generator)
    s = torch.where(_mask(n, p_affine, generator) > 0, 1 / z, torch.ones(n))
    zx = (1 - s) * _uniform(n, -1, 1, generator)
    zy = (1 - s) * _uniform(n, -1, 1, generator)
    return rotate @ _affine(s, zero, zx, zero, s, zy)


def affine_matrices(boxes: Tensor, flip_p: float = 0.5, max_rotate: float = 10.0,
                    max_zoom: float = 1.1, p_affine: float = 0.75,
                    generator: torch.Generator | None = None) -> Tensor:
    """(n, 3, 3) sampling matrices: crop box, then horizontal flip, rotation and zoom (fastai)."""
    signs = flip_signs(boxes.shape[0], flip_p, generator)
    return crop_matrices(boxes, signs) @ rotate_zoom_matrices(boxes.shape[0], max_rotate, max_zoom,
                                                              p_affine, generator)


def crop_resize(p: Pictures, boxes: Tensor, signs: Tensor, size: int) -> Tensor:
    """Cut each box out of its image, resize it (antialiased bilinear) to (B, 3, size, size), mirror where signs < 0.

    Boxes are (cx, cy, w, h) in each image's own frame, as seen. On CPU a uint8 batch takes
    PyTorch's SIMD uint8 resize kernel: 1.7-2.3x the batches per second of one grid_sample over
    the batch, loader and Normalize included (docs/BENCHMARKS.md), and antialiased where the
    crop shrinks. Output keeps the pixels' dtype.
    """
    x = p.pixels
    on_cpu = x.device.type == "cpu"  # elsewhere resize floats: CUDA has no antialiased uint8 kernel
    out = torch.empty((len(p), size, size, 3), dtype=x.dtype if on_cpu else torch.float32, device=x.device)
    mirror = (signs < 0).tolist()
    transposed = p.transposed.tolist()
    with single_threaded():
        for i, (top, left, h, w) in enumerate(_pixel_boxes(boxes, p.sizes)):
            t = transposed[i]  # stored transposed: the box's rows are the canvas's columns
            crop = x[i:i + 1, :, left:left + w, top:top + h] if t else x[i:i + 1, :, top:top + h, left:left + w]
            # The resize kernel needs a dense crop, so it is copied anyway: mirroring in that copy is free.
            crop = crop.flip(-2 if t else -1) if mirror[i] else crop.contiguous(memory_format=CHANNELS_LAST)
            crop = crop if on_cpu else to_unit(crop)
            resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            resized = resized.transpose(-1, -2) if t else resized
            out[i] = resized[0].permute(1, 2, 0)  # (S, S, 3) into the batch, no relayout
    return out.permute(0, 3, 1, 2)  # (B, 3, S, S) view, channels_last


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the enclosed torch ops on one intra-op thread, then restore the count.

    PyTorch splits even one small image's resize over its thread pool; per image the hand-off
    costs more than it saves: the crop loop measured 3x slower on 2 threads than on 1
    (docs/BENCHMARKS.md).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pixel_boxes(boxes: Tensor, sizes: Tensor) -> list[tuple[int, int, int, int]]:
    """Normalized (cx, cy, w, h) boxes of images (height, width) `sizes` -> integer (top, left, h, w) inside each."""
    cx, cy, w, h = boxes.double().unbind(dim=1)
    height, width = sizes.double().unbind(dim=1)
    pw, ph = (w * width).round().clamp(min=1), (h * height).round().clamp(min=1)
    pw, ph = torch.minimum(pw, width), torch.minimum(ph, height)
    left = ((cx + 1) / 2 * width - pw / 2).round().clamp(min=0)
    top = ((cy + 1) / 2 * height - ph / 2).round().clamp(min=0)
    left, top = torch.minimum(left, width - pw), torch.minimum(top, height - ph)
    return [tuple(int(v) for v in row) for row in torch.stack([top, left, ph, pw], dim=1).tolist()]


def warp_matrices(n: int, max_warp: float = 0.2, p: float = 0.75,
                  generator: torch.Generator | None = None) -> Tensor:
    """(n, 3, 3) perspective homographies moving the corners as fastai's `Warp` does."""
    mags = _uniform(2 * n, -max_warp, max_warp, generator) * _mask(2 * n, p, generator)  # (2n,)
    src = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])  # (4, 2) corners
    dst = src - src[:, :1] * src[:, 1:] * mags.view(n, 1, 2)  # (n, 4, 2): diagonals move together
    return _homography(src.expand(n, 4, 2), dst)


def _homography(src: Tensor, dst: Tensor) -> Tensor:
    """Solve for the (n, 3, 3) homographies taking 4 points src (n, 4, 2) onto dst (n, 4, 2)."""
    x, y = src.double().unbind(dim=2)  # float64: the 8x8 systems are tiny, precision is free
    u, v = dst.double().unbind(dim=2)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=2)  # (n, 4, 8)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=2)
    a = torch.cat([rows_u, rows_v], dim=1)  # (n, 8, 8)
    coeffs = torch.linalg.solve(a, torch.cat([u, v], dim=1))  # (n, 8)
    return torch.cat([coeffs, torch.ones_like(coeffs[:, :1])], dim=1).view(-1, 3, 3).float()


def sample_grid(matrices: Tensor, size: int) -> Tensor:
    """Apply (B, 3, 3) homographies to the output pixel centres: grid (B, size, size, 2)."""
    m = matrices.float()
    t = (torch.arange(size, device=m.device, dtype=torch.float32) * 2 + 1) / size - 1  # centres
    # M @ (x, y, 1) splits into a column term plus a row term: one broadcast add builds all
    # points, ~10x faster on CPU than a (B, S*S, 3) @ (B, 3, 3) matmul with its tiny inner dim.
    cols = t.view(1, size, 1) * m[:, None, :, 0] + m[:, None, :, 2]  # (B, S, 3)
    rows = t.view(1, size, 1) * m[:, None, :, 1]  # (B, S, 3)
    pts = rows[:, :, None, :] + cols[:, None, :, :]  # (B, S, S, 3): [b, i (y), j (x)]
    return pts[..., :2] / pts[..., 2:]


def resample(x: Tensor, matrices: Tensor, size: int) -> Tensor:
    """One bilinear resample of x (B, 3, P, P) through (B, 3, 3) matrices: float (B, 3, S, S) NCHW."""
    grid = sample_grid(matrices.to(x.device, non_blocking=True), size)  # (B, S, S, 2)
    # The only uint8 -> float conversion; scaling to [0, 1] waits for the smaller output.
    # Like fastai, no antialiasing: crops of a presized image shrink by at most P/S.
    y = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection",
                      align_corners=False)  # (B, 3, S, S), contiguous NCHW
    return y.mul_(1 / 255 if x.dtype == torch.uint8 else 1.0)  # in place: y is ours, fresh memory costs


def resample_pictures(p: Pictures, matrices: Tensor, size: int) -> Tensor:
    """As `resample`, for whole images on a canvas: each samples only its own pixels, reflected at its own edges."""
    grid = _reflect(sample_grid(matrices.to(p.device, non_blocking=True), size))  # each image's frame
    y = F.grid_sample(p.pixels.float(), _to_canvas(grid, p), mode="bilinear", padding_mode="border",
                      align_corners=False)
    return y.mul_(1 / 255 if p.pixels.dtype == torch.uint8 else 1.0)


def _reflect(grid: Tensor) -> Tensor:
    """Fold coordinates into [-1, 1] by mirroring at the edges (grid_sample's `reflection`)."""
    r = torch.remainder(grid + 1, 4)  # period 4: out to the far edge and back
    return torch.where(r > 2, 4 - r, r) - 1


def _to_canvas(grid: Tensor, p: Pictures) -> Tensor:
    """Points (B, S, S, 2) in each image's frame -> the canvas's, clamped to the image's own pixel centres."""
    canvas = torch.tensor([p.pixels.shape[-1], p.pixels.shape[-2]], dtype=torch.float32)  # (W, H)
    t = p.transposed[:, None]
    stored = torch.where(t, p.sizes, p.sizes.flip(1)).float()  # (B, 2): stored (width, height)
    grid = torch.where(t.to(grid.device)[:, None, None], grid.flip(-1), grid)  # transposed: x <-> y
    stored, canvas = stored.to(grid.device), canvas.to(grid.device)
    # To pixel-index space of the stored image (centres at 0 .. n-1), clamp, then to the canvas's [-1, 1].
    index = ((grid + 1) * stored[:, None, None] - 1) / 2
    index = torch.minimum(index.clamp(min=0), stored[:, None, None] - 1)
    return (2 * index + 1) / canvas - 1


def lighting(x: Tensor, max_lighting: float = 0.2, p: float = 0.75,
             generator: torch.Generator | None = None) -> Tensor:
    """fastai brightness + contrast in logit space: sigmoid(c*logit(x) + logit(b)), stays in [0, 1]."""
    n = x.shape[0]
    b = _uniform(n, 0.5 * (1 - max_lighting), 0.5 * (1 + max_lighting), generator)
    shift = torch.logit(b) * _mask(n, p, generator)  # brightness, logit(0.5) = 0 = no change
    log_c = _uniform(n, math.log(1 - max_lighting), -math.log(1 - max_lighting), generator)
    c = torch.exp(log_c * _mask(n, p, generator))  # contrast factor, 1 = no change
    params = torch.stack([c, shift], dim=1).to(x.device, x.dtype, non_blocking=True)
    c, shift = params.view(n, 2, 1, 1, 1).unbind(dim=1)  # (B, 1, 1, 1) each
    # One new tensor, then in-place passes (cheapest on NCHW: the broadcast runs over whole planes).
    return torch.logit(x, eps=1e-6).mul_(c).add_(shift).sigmoid_()


def check_size(size: int) -> None:
    """A crop side must be a positive int (pixels)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r} must be a positive int (pixels)")


TrainCrop = Literal["random_resized", "square"]  # fastai's RandomResizedCrop, or its Resize (crop method)


@dataclass
class AugmentSpec:
    """The Recipe's training augmentation: the keyword arguments of `TrainAugment`, which checks them too."""

    train_crop: TrainCrop = knob("random_resized", "fastai's RandomResizedCrop, or square: its Resize "
                                                   "(largest square, random place)")
    min_scale: float = knob(0.35, "smallest crop area fraction of random-resized-crop", range=Range(0.0, 1.0, True))
    flip: bool = knob(True, "random horizontal flips")
    max_rotate_deg: float = knob(10.0, "degrees, fastai aug_transforms default", aliases=("max_rotate",),
                                 range=Range(0.0, 180.0))
    max_zoom: float = knob(1.1, "largest random zoom; 1 = none", range=Range(1.0, 10.0))
    # Beyond ~0.5 the warp's homography can fold the image over itself.
    max_warp: float = knob(0.2, "perspective warp strength; 0 = none", range=Range(0.0, 0.5))
    max_lighting: float = knob(0.2, "brightness and contrast change; 0 = none", range=Range(0.0, 1.0, high_open=True))
    trivial_augment: bool = knob(False, "TrivialAugment-Wide: one random op of random strength per image")


UNIT = Range(0.0, 1.0)  # a probability


class TrainAugment:
    """fastai `aug_transforms` + `RandomResizedCrop` on a uint8 batch, as one resample per image.

    Its keywords are `AugmentSpec`'s fields (checked against their ranges), plus the
    probabilities and aspect ratios the book's `aug_transforms` sets. `train_crop="square"`
    replaces the random-resized crop by fastai's `Resize(size)`: the largest square at a random
    place (`min_scale` is then unused). `trivial_augment=True` adds TrivialAugment-Wide after the
    crop (one random operation per image, see `vivace.trivial_augment`), before lighting.
    """

    def __init__(self, size: int, train_crop: TrainCrop = "random_resized", min_scale: float = 0.35,
                 flip: bool = True, max_rotate_deg: float = 10.0, max_zoom: float = 1.1, max_warp: float = 0.2,
                 max_lighting: float = 0.2, trivial_augment: bool = False,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), p_affine: float = 0.75, p_lighting: float = 0.75,
                 seed: int | None = None):
        check_size(size)
        check_fields(AugmentSpec(train_crop, min_scale, flip, max_rotate_deg, max_zoom, max_warp, max_lighting,
                                 trivial_augment))
        Range(1e-3, ratio[1]).check("ratio[0]", ratio[0])
        UNIT.check("p_affine", p_affine)
        UNIT.check("p_lighting", p_lighting)
        self.size, self.flip_p = size, (0.5 if flip else 0.0)
        self.scale, self.ratio = (min_scale, 1.0), (float(ratio[0]), float(ratio[1]))
        self.max_rotate, self.max_zoom, self.max_warp = max_rotate_deg, max_zoom, max_warp
        self.p_affine, self.max_lighting, self.p_lighting = p_affine, max_lighting, p_lighting
        self.trivial, self.crop = trivial_augment, train_crop
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __call__(self, x: Pictures | Tensor, generator: torch.Generator | None = None,
                 size: int | None = None) -> Tensor:
        """uint8 Pictures (or a (B, 3, H, W) batch) -> float (B, 3, S, S) in [0, 1], channels_last;
        S = `size`, else the augmentation's own (progressive resizing passes each step's)."""
        return to_unit(self.pixels(x, generator, size))

    def pixels(self, x: Pictures | Tensor, generator: torch.Generator | None = None,
               size: int | None = None) -> Tensor:
        """As calling it, but left uint8 (0..255) where no stage needed floats (crop + flip on the CPU).

        `Normalize` reads uint8 as pixel / 255 in the same pass that scales it, so the float
        conversion of [0, 1] is never a pass of its own (see `Pipeline`).
        """
        p = as_pictures(x)
        size = size or self.size
        check_size(size)
        g = generator if generator is not None else self.generator
        # Parameters are drawn and composed on the CPU (tiny); one (B, 3, 3) copy to the device.
        n = len(p)
        boxes = (random_square_boxes(p.sizes, g) if self.crop == "square"
                 else random_resized_crop_params(p.sizes, self.scale, self.ratio, g))
        signs = flip_signs(n, self.flip_p, g)
        geo = rotate_zoom_matrices(n, self.max_rotate, self.max_zoom, self.p_affine, g)
        geo = geo @ warp_matrices(n, self.max_warp, self.p_affine, g)
        if p.device.type == "cpu":
            y = self._two_stage(p, boxes, signs, geo, size)
        else:  # on the GPU grid_sample is cheap: crop, flip, rotate, zoom and warp in one resample
            y = resample_pictures(p, crop_matrices(boxes, signs) @ geo, size)
        if self.trivial:
            y = trivial_augment(to_unit(y), g)
        if self.max_lighting > 0 and self.p_lighting > 0:
            y = lighting(to_unit(y), self.max_lighting, self.p_lighting, g)
        return y.contiguous(memory_format=CHANNELS_LAST)  # one relayout at the end, for channels_last convs

    def _two_stage(self, p: Pictures, boxes: Tensor, signs: Tensor, geo: Tensor, size: int) -> Tensor:
        """CPU path: uint8 crop-resize (fast, antialiased), then rotate/zoom/warp where drawn."""
        y = crop_resize(p, boxes, signs, size)
        moved = ((geo - torch.eye(3)).abs().amax(dim=(1, 2)) > 1e-6).nonzero().flatten()
        if len(moved):  # a second bilinear resample, only of the images that rotate/zoom/warp
            y = to_unit(y)
            y[moved] = resample(y[moved], geo[moved], size).contiguous(memory_format=CHANNELS_LAST)
        return y


def to_unit(x: Tensor) -> Tensor:
    """uint8 pixels -> float in [0, 1] (same memory format); floating tensors pass through."""
    return x if x.is_floating_point() else x.float().mul_(1 / 255)
