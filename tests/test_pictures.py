"""Whole, non-square images: the canvas they share, fastai's crops and validation view on them."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vivace.augment import (TrainAugment, crop_matrices, crop_resize, random_resized_crop_params, random_square_boxes,
                            resample_pictures)
from vivace.views import ValidResize, fastai_valid_crop
from vivace.data.cache import build_cache
from vivace.pictures import Pictures

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _three_to_one(path: Path, wide: bool = True) -> Path:
    """A 3:1 image, 48 x 144: left sixth red, right sixth blue, green between (or top to bottom)."""
    a = np.zeros((48, 144, 3), np.uint8)
    a[:] = GREEN
    a[:, :24] = RED
    a[:, -24:] = BLUE
    Image.fromarray(a if wide else a.transpose(1, 0, 2).copy()).save(path)
    return path


@pytest.mark.parametrize("wide", [True, False])
def test_training_crops_reach_both_ends_of_a_three_to_one_image(tmp_path, wide):
    cache = build_cache([_three_to_one(tmp_path / "pano.png", wide)], 48, tmp_path / "c", workers=1, progress=False)
    assert cache.sizes.tolist() == [[48, 144] if wide else [144, 48]]
    pictures = cache.gather(np.zeros(400, dtype=np.int64))  # one image, 400 draws
    aug = TrainAugment(32, min_scale=0.35, flip=False, max_rotate_deg=0, max_zoom=1, max_warp=0, max_lighting=0, seed=0)
    y = aug(pictures)  # (400, 3, 32, 32) in [0, 1]
    red = (y[:, 0] > 0.9) & (y[:, 1] < 0.1)
    blue = (y[:, 2] > 0.9) & (y[:, 1] < 0.1)
    # A centre square (the old cache) never shows either end; fastai's crops of the whole image do.
    assert red.flatten(1).any(1).float().mean() > 0.03 and blue.flatten(1).any(1).float().mean() > 0.03
    edge = (slice(None), slice(None), 0) if wide else (slice(None), 0)  # the first column (wide) or row
    reached = red[edge].flatten(1).all(1)  # crops whose whole first column (row) is red: the very end
    assert reached.any()


def _fastai_valid_view(path: Path, size: int) -> np.ndarray:
    """fastai's RandomResizedCrop in validation, written from its source with PIL: squash the whole
    image to (size + xtra) square with bilinear, then centre-crop `size`."""
    xtra = int(np.ceil(size * 0.14 / 8) * 8)
    big = Image.open(path).convert("RGB").resize((size + xtra, size + xtra), Image.Resampling.BILINEAR)
    m = xtra // 2
    return np.asarray(big)[m:m + size, m:m + size]


@pytest.mark.parametrize("shape", [(160, 213), (213, 160), (160, 480)])
def test_validation_matches_fastai_view(tmp_path, shape):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 64 * 4], axis=-1).astype(np.uint8)
    path = tmp_path / "known.png"
    Image.fromarray(a).save(path)
    cache = build_cache([path], 160, tmp_path / "c", workers=1, progress=False)
    ours = ValidResize(128, fastai_valid_crop(128))(cache.gather(np.array([0])))[0]  # float (3, 128, 128)
    ours = (ours.permute(1, 2, 0) * 255).numpy()
    theirs = _fastai_valid_view(path, 128).astype(np.float32)
    assert fastai_valid_crop(128) == 128 / 152
    assert np.abs(ours - theirs).mean() < 1.5  # same view; only the two bilinear kernels' rounding differs


@pytest.mark.parametrize("shape", [(160, 213), (213, 160)])
def test_square_validation_matches_fastai_resize_view(tmp_path, shape):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 64 * 4], axis=-1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "known.png")
    cache = build_cache([tmp_path / "known.png"], 160, tmp_path / "c", workers=1, progress=False)
    ours = ValidResize(128, 1.0, square=True)(cache.gather(np.array([0])))[0].permute(1, 2, 0).numpy() * 255
    top, left = (h - 160) // 2, (w - 160) // 2  # fastai's Resize in validation: the centre square, resized
    theirs = Image.fromarray(a[top:top + 160, left:left + 160]).resize((128, 128), Image.Resampling.BILINEAR)
    assert np.abs(ours - np.asarray(theirs, np.float32)).mean() < 1.5


def test_fastai_boxes_on_a_wide_image_stay_inside_and_keep_the_pixel_ratio():
    sizes = torch.tensor([[100, 300]]).expand(3000, 2)
    boxes = random_resized_crop_params(sizes, (0.35, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    cx, cy, bw, bh = boxes.unbind(1)
    ratio = (bw * 300) / (bh * 100)  # width / height in pixels
    assert ratio.min() >= 0.74 and ratio.max() <= 1.35
    assert (cx.abs() <= 1 - bw + 1e-6).all() and (cy.abs() <= 1 - bh + 1e-6).all()
    assert (cx - bw).min() < -0.99 and (cx + bw).max() > 0.99  # some reach each end
    area = bw * bh
    assert area.max() <= 100 * 133.5 / 30000  # the largest crop that fits has the widest allowed ratio


def test_square_crop_is_fastais_resize_the_largest_square_anywhere_along_the_long_side(tmp_path):
    sizes = torch.tensor([[100, 300], [300, 100], [128, 128]]).repeat(500, 1)
    cx, cy, bw, bh = random_square_boxes(sizes, torch.Generator().manual_seed(0)).unbind(1)
    side_px = torch.stack([bw * sizes[:, 1], bh * sizes[:, 0]], 1)
    assert torch.allclose(side_px, sizes.min(1, keepdim=True).values.float().expand(-1, 2))  # largest square
    wide, tall, square = slice(0, None, 3), slice(1, None, 3), slice(2, None, 3)
    assert cy[wide].abs().max() == 0 and cx[tall].abs().max() == 0 and cx[square].abs().max() == 0
    assert cx[wide].min() <= -0.66 and cx[wide].max() >= 0.66  # both ends of the long side are reached
    assert cy[tall].min() <= -0.66 and cy[tall].max() >= 0.66

    cache = build_cache([_three_to_one(tmp_path / "pano.png")], 48, tmp_path / "c", workers=1, progress=False)
    aug = TrainAugment(32, train_crop="square", flip=False, max_rotate_deg=0, max_zoom=1, max_warp=0, max_lighting=0, seed=0)
    y = aug(cache.gather(np.zeros(200, dtype=np.int64)))
    red_column = ((y[:, 0] > 0.9) & (y[:, 1] < 0.1))[:, :, 0].all(1)
    assert red_column.any() and not red_column.all()  # the left end, sometimes
    with pytest.raises(ValueError, match="crop='centre' is not one of"):
        TrainAugment(32, train_crop="centre")


def _mixed() -> Pictures:
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).numpy()
              for shape in [(16, 40, 3), (40, 16, 3), (16, 16, 3)]]
    images = [np.asarray(Image.fromarray(a).resize((a.shape[1] // 4, a.shape[0] // 4)).resize((a.shape[1], a.shape[0])))
              for a in images]  # smooth: the two resamplers then agree closely
    return Pictures.pack(images)


def test_pack_keeps_each_image_as_seen():
    p = _mixed()
    assert tuple(p.pixels.shape) == (3, 3, 16, 40) and p.transposed.tolist() == [False, True, False]
    assert [tuple(p.image(i).shape) for i in range(3)] == [(3, 16, 40), (3, 40, 16), (3, 16, 16)]
    assert not p.fill_canvas and Pictures.full(p.pixels).fill_canvas


def test_gpu_path_samples_the_same_crops_as_the_cpu_path():
    """resample_pictures (one grid_sample over the canvas, used on CUDA) = crop_resize (CPU), per image."""
    p = _mixed()
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, -0.3, 0.5, 0.6], [-0.1, 0.1, 0.7, 0.8]])
    signs = torch.tensor([1.0, -1.0, 1.0])
    cpu = crop_resize(p, boxes, signs, 16).float() / 255
    whole = F.interpolate(p.image(0)[None].float(), size=(16, 16), mode="bilinear", antialias=True) / 255
    torch.testing.assert_close(cpu[0], whole[0], atol=1 / 255, rtol=0)  # box (0, 0, 1, 1) is the whole image
    gpu_path = resample_pictures(p, crop_matrices(boxes, signs), 16)
    assert (cpu - gpu_path).abs().mean() < 0.03  # grid_sample does not antialias; the geometry is the same


def test_gpu_path_reflects_at_the_image_edge_not_the_canvas_edge():
    p = _mixed()  # image 2 is 16 x 16 on a 40 px wide canvas: beyond its right edge lies black padding
    shift = torch.eye(3).expand(3, 3, 3).clone()
    shift[:, 0, 2] = 0.5  # sample a quarter of the image further right: the last 4 columns fall past the edge
    y = resample_pictures(p, shift, 16)[2]
    image = p.image(2).float() / 255  # (3, 16, 16): the identity resample reads it exactly
    torch.testing.assert_close(y[..., :12], image[..., 4:], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[..., 12:], image[..., 12:].flip(-1), atol=1e-5, rtol=0)  # mirrored, not black
