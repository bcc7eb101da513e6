"""Tests for vivace.augment: shapes, ranges, geometry, determinism and statistics on tiny batches."""
import math

import pytest
import torch
import torch.nn.functional as F

from vivace.augment import (TrainAugment, affine_matrices, lighting, random_resized_crop_params, resample,
                            sample_grid, warp_matrices)
from vivace.views import ValidResize, center_crop_resize, five_crop
from vivace.normalize import Normalize, compute_stats, imagenet_stats

CL = torch.channels_last
NO_AUG = dict(min_scale=1.0, ratio=(1.0, 1.0), flip=False, max_rotate_deg=0.0, max_zoom=1.0,
              max_warp=0.0, p_affine=0.0, max_lighting=0.0, p_lighting=0.0)


def squares(n: int, side: int = 64) -> torch.Tensor:
    return torch.tensor([[side, side]]).expand(n, 2)  # (height, width) of n square images


def batch(b=4, p=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, p, p), dtype=torch.uint8, generator=g)
    return x.contiguous(memory_format=CL)  # as the loader yields it


def test_train_augment_shape_dtype_range_channels_last():
    y = TrainAugment(12, seed=0)(batch())
    assert y.shape == (4, 3, 12, 12) and y.dtype == torch.float32
    assert 0.0 <= y.min() and y.max() <= 1.0
    assert y.is_contiguous(memory_format=CL)


def test_size_attribute_changes_output_size():
    aug = TrainAugment(8, seed=0)
    assert aug(batch()).shape[-1] == 8
    aug.size = 20  # progressive resizing, larger than the input too
    assert aug(batch()).shape[-2:] == (20, 20)
    aug.size = 0
    with pytest.raises(ValueError, match="size"):
        aug(batch())


def test_identity_configuration_reproduces_input():
    x = batch()
    y = TrainAugment(16, **NO_AUG, seed=0)(x)
    torch.testing.assert_close(y, x.float() / 255, atol=1e-5, rtol=0)


def test_flips_really_flip():
    x = batch(b=16, p=12)
    y = TrainAugment(8, **{**NO_AUG, "flip": True}, seed=1)(x)
    # The CPU path resizes in uint8 with antialiasing: compare against that resize.
    ref = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False).float() / 255
    flipped = [not torch.allclose(y[i], ref[i], atol=1e-5) for i in range(16)]
    assert 0 < sum(flipped) < 16  # p = 0.5: some of each
    for i in range(16):
        expected = ref[i].flip(-1) if flipped[i] else ref[i]
        torch.testing.assert_close(y[i], expected, atol=1e-5, rtol=0)


def test_cpu_two_stage_matches_one_resample_path():
    """The CPU fast path (uint8 crop-resize, then rotate/zoom/warp) samples the same geometry."""
    x = torch.linspace(0, 255, 64).view(1, 1, 1, 64).expand(6, 3, 64, 64).round().to(torch.uint8)
    x = x.contiguous(memory_format=CL)  # a smooth ramp: resampling differences stay small
    aug = TrainAugment(32, min_scale=0.5, max_lighting=0.0, seed=3)
    fast = aug(x)
    g = torch.Generator().manual_seed(3)
    from vivace.augment import crop_matrices, flip_signs, rotate_zoom_matrices
    boxes = random_resized_crop_params(squares(6), aug.scale, aug.ratio, g)
    signs = flip_signs(6, aug.flip_p, g)
    geo = rotate_zoom_matrices(6, aug.max_rotate, aug.max_zoom, aug.p_affine, g) @ warp_matrices(6, aug.max_warp, aug.p_affine, g)
    single = resample(x, crop_matrices(boxes, signs) @ geo, 32)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # borders differ by padding
    assert (fast[inner] - single[inner]).abs().mean() < 0.02


def test_crop_params_area_and_aspect_within_range():
    boxes = random_resized_crop_params(squares(4000, 1000), (0.35, 1.0), (3 / 4, 4 / 3),
                                       torch.Generator().manual_seed(0))
    cx, cy, w, h = boxes.unbind(1)
    area, aspect = w * h, w / h
    assert area.min() >= 0.35 - 1e-2 and area.max() <= 1 + 1e-5  # whole pixels: rounding moves it a little
    assert aspect.min() >= 3 / 4 - 1e-2 and aspect.max() <= 4 / 3 + 1e-2
    assert (cx.abs() <= 1 - w + 1e-6).all() and (cy.abs() <= 1 - h + 1e-6).all()  # inside image
    assert area.std() > 0.1 and cx.std() > 0.1  # really random


def test_crop_params_infeasible_ratio_falls_back_inside_image():
    boxes = random_resized_crop_params(squares(100), (0.9, 1.0), (3.0, 4.0))
    assert (boxes[:, 2:] <= 1).all()
    # fastai's fallback: the centre crop at the nearest allowed ratio (3:1 -> full width, a third of the height)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 1.0, 21 / 64]), atol=2 / 64, rtol=0)


def test_crops_vary_across_items_and_calls():
    x = batch(b=1, p=32).expand(6, -1, -1, -1)  # one image repeated
    aug = TrainAugment(16, min_scale=0.3, flip=False, p_affine=0.0, p_lighting=0.0, seed=0)
    y1, y2 = aug(x), aug(x)
    assert not torch.allclose(y1[0], y1[1])
    assert not torch.allclose(y1, y2)


def test_rotation_changes_image():
    x = batch()
    y = TrainAugment(16, **{**NO_AUG, "max_rotate_deg": 30.0, "p_affine": 1.0}, seed=0)(x)
    assert (y - x.float() / 255).abs().mean() > 0.05


def test_warp_and_zoom_are_homographies_fixing_nothing_trivial():
    g = torch.Generator().manual_seed(0)
    m = warp_matrices(8, max_warp=0.3, p=1.0, generator=g)
    assert m.shape == (8, 3, 3) and not torch.allclose(m, torch.eye(3).expand(8, 3, 3))
    assert torch.allclose(warp_matrices(3, 0.3, p=0.0), torch.eye(3).expand(3, 3, 3), atol=1e-6)
    zoom = affine_matrices(torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4), 0.0, 0.0, 1.5, 1.0, g)
    assert (zoom[:, 0, 0] < 1).all()  # zoom in: the window is smaller than the frame


def test_sample_grid_identity_is_pixel_centres_and_resample_is_exact():
    grid = sample_grid(torch.eye(3).expand(2, 3, 3), 4)
    assert grid.shape == (2, 4, 4, 2)
    torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    x = batch(b=2, p=4)
    torch.testing.assert_close(resample(x, torch.eye(3).expand(2, 3, 3), 4), x.float() / 255)


def test_lighting_stays_in_range_and_changes_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    y = lighting(x, max_lighting=0.5, p=1.0, generator=g)
    assert 0 <= y.min() and y.max() <= 1
    per_item = (y.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs()
    assert per_item.max() > 0.02
    torch.testing.assert_close(lighting(x, 0.5, p=0.0, generator=g), x, atol=1e-5, rtol=0)


def test_determinism_with_seed():
    x = batch()
    assert torch.equal(TrainAugment(12, seed=3)(x), TrainAugment(12, seed=3)(x))
    assert not torch.equal(TrainAugment(12, seed=3)(x), TrainAugment(12, seed=4)(x))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    aug = TrainAugment(12)
    assert torch.equal(aug(x, g1), aug(x, g2))


@pytest.mark.parametrize("kw", [dict(size=0), dict(min_scale=0.0), dict(min_scale=1.5),
                                dict(ratio=(2.0, 1.0)), dict(max_zoom=0.5), dict(max_rotate_deg=-1.0),
                                dict(max_warp=0.9), dict(p_affine=1.5), dict(max_lighting=1.0),
                                dict(p_lighting=-0.1)])
def test_train_augment_rejects_bad_args(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        TrainAugment(**{"size": 8, **kw})


def test_bad_batch_shape_raises():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        TrainAugment(8)(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_valid_resize_shape_range_and_layout():
    y = ValidResize(10)(batch(p=16))
    assert y.shape == (4, 3, 10, 10) and 0 <= y.min() and y.max() <= 1
    assert y.is_contiguous(memory_format=CL)
    x = batch(p=16)
    torch.testing.assert_close(ValidResize(16)(x), x.float() / 255)
    with pytest.raises(ValueError, match="size"):
        ValidResize(0)


def quadrant_image(p=8) -> torch.Tensor:
    x = torch.zeros(1, 3, p, p, dtype=torch.uint8)
    h = p // 2
    x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:] = 10, 20, 30, 40
    return x


def test_five_crop_corners_and_centre():
    x = quadrant_image(8)
    centre, tl, tr, bl, br = five_crop(x, 4, crop_frac=0.5)
    for crop, value in [(tl, 10), (tr, 20), (bl, 30), (br, 40)]:
        assert crop.shape == (1, 3, 4, 4)
        torch.testing.assert_close(crop, torch.full_like(crop, value / 255))
    expected = x[..., 2:6, 2:6].float() / 255  # centre straddles all four quadrants
    torch.testing.assert_close(centre, expected)
    assert [c.shape[-1] for c in five_crop(x, 3)] == [3] * 5


def test_center_crop_resize():
    x = quadrant_image(8)
    torch.testing.assert_close(center_crop_resize(x, 4, 0.5), x[..., 2:6, 2:6].float() / 255)
    assert center_crop_resize(x, 5).shape == (1, 3, 5, 5)
    with pytest.raises(ValueError, match="crop_frac"):
        center_crop_resize(x, 4, 0.0)


def test_normalize_and_decode():
    norm = Normalize.from_stats(*imagenet_stats)
    x = torch.rand(2, 3, 4, 4).contiguous(memory_format=CL)
    y = norm(x)
    mean = torch.tensor(imagenet_stats[0]).view(1, 3, 1, 1)
    std = torch.tensor(imagenet_stats[1]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (x - mean) / std)
    torch.testing.assert_close(norm.decode(y), x)
    assert y.is_contiguous(memory_format=CL)
    assert norm(x.double()).dtype == torch.float64
    assert norm.as_dict() == {"mean": imagenet_stats[0], "std": imagenet_stats[1]}
    with pytest.raises(ValueError, match="std"):
        Normalize([0.5, 0.5, 0.5], [0.2, 0.0, 0.2])


def test_normalize_reads_uint8_as_pixels_over_255_in_both_layouts():
    norm = Normalize.from_stats(*imagenet_stats)
    x = batch(b=3, p=6)  # uint8, channels_last
    expected = norm(x.float() / 255)
    y = norm(x)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y, expected)
    nchw = x.contiguous()  # the broadcasting path
    torch.testing.assert_close(norm(nchw), expected)
    assert norm(nchw).dtype == torch.float32
    torch.testing.assert_close(norm(x[:, :, :, :5]), expected[:, :, :, :5])  # not dense: the fallback


def test_pixels_stay_uint8_only_where_no_stage_needs_floats():
    x = batch(b=8, p=16)
    crop_flip = TrainAugment(12, **{**NO_AUG, "min_scale": 0.35, "flip": True}, seed=3)
    px = crop_flip.pixels(x, torch.Generator().manual_seed(0))
    assert px.dtype == torch.uint8 and px.shape == (8, 3, 12, 12) and px.is_contiguous(memory_format=CL)
    unit = crop_flip(x, torch.Generator().manual_seed(0))  # same draws
    torch.testing.assert_close(unit, px.float() / 255)
    lit = TrainAugment(12, **{**NO_AUG, "max_lighting": 0.5, "p_lighting": 1.0}, seed=0)
    assert lit.pixels(x).dtype == torch.float32  # lighting works on floats
    rotated = TrainAugment(12, **{**NO_AUG, "max_rotate_deg": 30.0, "p_affine": 1.0}, seed=0)
    assert rotated.pixels(x).dtype == torch.float32
    valid = ValidResize(10)
    assert valid.pixels(x).dtype == torch.uint8
    torch.testing.assert_close(valid(x), valid.pixels(x).float() / 255)


def test_compute_stats_matches_torch_over_concatenation():
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(b, 3, 5, 5, generator=g) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
               for b in (3, 1, 4)]
    mean, std = compute_stats(iter(batches))
    flat = torch.cat(batches).double().transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(flat.mean(1).tolist(), abs=1e-9)
    assert std == pytest.approx(flat.std(1).tolist(), abs=1e-9)
    with pytest.raises(ValueError):
        compute_stats([])


def test_show_batch_and_augmentation_grid_write_png(tmp_path):
    from vivace.show import augmentation_grid, image_grid

    norm = Normalize(*imagenet_stats)
    x = norm(torch.rand(5, 3, 8, 8))
    fig = image_grid(x, ["a", "b", "c", "d", "e"], tmp_path / "batch.png", normalize=norm, ncols=3)
    assert (tmp_path / "batch.png").stat().st_size > 0
    assert fig.axes[0].get_title() == "a"
    augmentation_grid(batch(b=1), TrainAugment(8, seed=0), n=4, path=tmp_path / "aug.png")
    assert (tmp_path / "aug.png").stat().st_size > 0


def test_rotation_matrix_angle_bounded():
    g = torch.Generator().manual_seed(0)
    m = affine_matrices(torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 500), 0.0, 10.0, 1.0, 1.0, g)
    angle = torch.atan2(m[:, 1, 0], m[:, 0, 0]) * 180 / math.pi
    assert angle.abs().max() <= 10.0 + 1e-4 and angle.abs().max() > 5.0


def test_valid_resize_crops_the_centre_before_resizing():
    x = quadrant_image(8)
    torch.testing.assert_close(ValidResize(4, crop=0.5)(x), x[..., 2:6, 2:6].float() / 255)
    assert ValidResize(8, crop=0.875).pixels(x).shape == (1, 3, 8, 8)  # 7 px centre, upsampled
    with pytest.raises(ValueError, match="crop"):
        ValidResize(4, crop=0.0)
