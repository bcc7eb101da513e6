"""Tests for vivace.trivial_augment: each operation against PIL's definition, and the batch policy."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from vivace.augment import TrainAugment
from vivace.recipe import make_recipe
from vivace.trivial_augment import BINS, OPS, _apply, trivial_augment

CL = torch.channels_last


def pixels(b=3, p=20, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, p, p), dtype=torch.uint8, generator=g)


def unit(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255).contiguous(memory_format=CL)


def pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def apply_one(name: str, x: torch.Tensor, level: float, sign: float = 1.0) -> torch.Tensor:
    n = x.shape[0]
    lv = torch.full((n,), level)
    return _apply(name, x, lv, lv * sign)


def test_policy_shape_range_and_determinism():
    x = unit(pixels(b=32))
    a = trivial_augment(x, torch.Generator().manual_seed(1))
    b = trivial_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, trivial_augment(x, torch.Generator().manual_seed(2)))


def test_policy_changes_most_images_and_leaves_some_alone():
    x = unit(pixels(b=140))
    y = trivial_augment(x, torch.Generator().manual_seed(0))
    same = (y - x).abs().amax(dim=(1, 2, 3)) < 1e-6
    # identity is 1 of 14 operations (and level 0 of an unsigned op is near identity too)
    assert 0 < int(same.sum()) < 40


@pytest.mark.parametrize("name,enhancer", [("brightness", ImageEnhance.Brightness),
                                           ("color", ImageEnhance.Color),
                                           ("contrast", ImageEnhance.Contrast),
                                           ("sharpness", ImageEnhance.Sharpness)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_enhance_ops_match_pil(name, enhancer, sign):
    x8 = pixels(b=1, p=16)
    level = 0.5
    ours = apply_one(name, unit(x8), level, sign)[0]
    theirs = from_pil(enhancer(pil(x8[0])).enhance(1 + 0.99 * level * sign))
    # PIL rounds to 8 bits (and computes contrast's mean on rounded luma): within 2 levels
    assert (ours - theirs).abs().max() <= 2.5 / 255


@pytest.mark.parametrize("name,reference", [("autocontrast", ImageOps.autocontrast),
                                            ("equalize", ImageOps.equalize)])
def test_histogram_ops_match_pil(name, reference):
    x8 = (pixels(b=1, p=24) // 2 + 40)  # a narrow histogram, so both ops change it
    ours = apply_one(name, unit(x8), 1.0)[0]
    theirs = from_pil(reference(pil(x8[0])))
    assert (ours - theirs).abs().max() <= 1.5 / 255


def test_posterize_and_solarize_match_pil():
    x8 = pixels(b=1, p=16)
    for level, bits in ((0.0, 8), (0.5, 5), (1.0, 2)):
        ours = apply_one("posterize", unit(x8), level)[0]
        assert torch.allclose(ours, from_pil(ImageOps.posterize(pil(x8[0]), bits)), atol=1e-6)
    ours = apply_one("solarize", unit(x8), 0.25)[0]  # threshold 1 - 0.25 = 191.25 / 255
    theirs = from_pil(ImageOps.solarize(pil(x8[0]), threshold=192))
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_geometric_ops_at_level_zero_are_identity_and_translate_shifts():
    x = unit(pixels(b=2, p=28))
    for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        assert torch.allclose(apply_one(name, x, 0.0), x, atol=1e-5), name
    # a full-strength translation moves the content by 32/224 of the side: 4 px of 28
    shifted = apply_one("translate_x", x, 1.0)
    assert torch.allclose(shifted[..., :, :-4], x[..., :, 4:], atol=1e-5)


def test_ops_list_and_bins_are_torchvisions_wide_set():
    assert len(OPS) == 14 and OPS[0] == "identity" and BINS == 31


def test_train_augment_trivial_flag_and_recipe_field():
    x = pixels(b=8, p=24).contiguous(memory_format=CL)
    plain = TrainAugment(16, seed=0, max_lighting=0.0)(x)
    trivial = TrainAugment(16, seed=0, max_lighting=0.0, trivial_augment=True)(x)
    assert trivial.shape == plain.shape and trivial.is_contiguous(memory_format=CL)
    assert not torch.equal(trivial, plain)
    assert make_recipe(trivial_augment=True).trivial_augment
