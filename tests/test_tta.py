"""Tests for vivace.tta: fastai's blend, and which views a stub model with known outputs sees."""
import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vivace.augment import TrainAugment
from vivace.data.eval_view import EvalView
from vivace.learner import Learner
from vivace.tta import (combine_tta, five_crop_tta, five_crop_views, flip_tta, flip_views, predict_probs,
                        prob_metrics, tta, tta_probs, tta_views, view_probs)
from vivace.views import ValidResize

from conftest import SizeSpy


class Fn(nn.Module):
    """A model whose output is a known function of its input."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class RawLoader:
    """A loader stub: one uint8 batch, as `BatchLoader.iter_raw` yields it."""

    def __init__(self, x, y, size, crop=1.0):
        self.x, self.y, self.size = x, y, size
        self.cache = SimpleNamespace(presize=x.shape[-1])
        self.transform = SimpleNamespace(resize=ValidResize(size, crop))

    def iter_raw(self):
        yield self.x, self.y


def stub_learner(fn, x, size, train_aug=None):
    view = EvalView(size, 1.0, False, presize=x.shape[-1], max_aspect=1.0, normalize=None)
    dls = SimpleNamespace(valid=RawLoader(x, torch.zeros(len(x), dtype=torch.long), size), eval_view=view,
                          multi_label=False, train=SimpleNamespace(transform=SimpleNamespace(resize=train_aug)))
    return SimpleNamespace(model=Fn(fn), autocast=contextlib.nullcontext, dls=dls)


# -- the pure blend ------------------------------------------------------------------------
AUG = torch.tensor([[[0.6, 0.4]], [[0.2, 0.8]]])  # (n=2, N=1, C=2)
PLAIN = torch.tensor([[0.9, 0.1]])


def test_combine_mean_then_beta_weights_the_plain_prediction():
    torch.testing.assert_close(combine_tta(AUG, PLAIN, beta=0.25), torch.tensor([[0.525, 0.475]]))
    torch.testing.assert_close(combine_tta(AUG, PLAIN, beta=0.0), torch.tensor([[0.4, 0.6]]))
    torch.testing.assert_close(combine_tta(AUG, PLAIN, beta=1.0), PLAIN)


def test_combine_beta_none_returns_both_and_use_max_ignores_beta():
    aug, plain = combine_tta(AUG, PLAIN, beta=None)
    torch.testing.assert_close(aug, torch.tensor([[0.4, 0.6]]))
    assert plain is PLAIN
    for beta in (None, 0.25, 1.0):  # fastai: max over passes, then max with the plain pass
        torch.testing.assert_close(combine_tta(AUG, PLAIN, beta=beta, use_max=True), torch.tensor([[0.9, 0.8]]))


def test_combine_rejects_bad_shapes_and_beta():
    with pytest.raises(ValueError, match="beta=1.5"):
        combine_tta(AUG, PLAIN, beta=1.5)
    with pytest.raises(ValueError, match=r"\(n, N, C\)"):
        combine_tta(AUG[0], PLAIN)


# -- views on a stub model -----------------------------------------------------------------
CROP_MEANS = torch.tensor([25.0, 10.0, 20.0, 30.0, 40.0])  # centre, TL, TR, BL, BR


def quadrant_image():
    x = torch.empty(1, 3, 8, 8, dtype=torch.uint8)
    x[..., :4, :4], x[..., :4, 4:], x[..., 4:, :4], x[..., 4:, 4:] = 10, 20, 30, 40
    return x


def which_crop(x):
    """Logits peaked at the index of the crop whose mean pixel value x has."""
    return -(x.mean((1, 2, 3))[:, None] * 255 - CROP_MEANS) ** 2  # (B, 5)


def test_five_crops_are_the_centre_and_the_four_corners():
    learn = stub_learner(which_crop, quadrant_image(), size=4)
    probs, _ = view_probs(learn, learn.dls.valid, five_crop_views(learn, 4, crop_frac=0.5))
    assert probs.shape == (5, 1, 5)
    assert probs[:, 0].argmax(-1).tolist() == [0, 1, 2, 3, 4]  # each crop seen once, in order
    mean, _ = five_crop_tta(learn, crop_frac=0.5, size=4)
    torch.testing.assert_close(mean, torch.full((1, 5), 0.2))


def left_half_probs(x):
    a = x[:, 0, :, : x.shape[-1] // 2].mean((1, 2))  # (B,) mean of the left half, in [0, 1]
    return torch.stack([a, 1 - a], dim=1).log()  # softmax gives back (a, 1 - a)


def test_flip_tta_averages_the_image_and_its_mirror():
    x = torch.full((1, 3, 4, 4), 51, dtype=torch.uint8)
    x[..., :2] = 204  # left half 0.8, right half 0.2
    learn = stub_learner(left_half_probs, x, size=4)
    probs, _ = view_probs(learn, learn.dls.valid, flip_views(learn, 4))
    torch.testing.assert_close(probs[:, 0], torch.tensor([[0.8, 0.2], [0.2, 0.8]]))
    torch.testing.assert_close(flip_tta(learn)[0], torch.tensor([[0.5, 0.5]]))


def test_tta_is_n_augmented_views_then_the_plain_one_blended_as_fastai():
    x = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    learn = stub_learner(lambda v: v.mean((2, 3)) * 4, x, size=8, train_aug=TrainAugment(8, seed=0))
    views = list(tta_views(learn, 8, n=3, seed=1)(x))
    assert len(views) == 4 and all(v.shape == (3, 3, 8, 8) for v in views)
    probs, _ = view_probs(learn, learn.dls.valid, tta_views(learn, 8, n=3, seed=1))
    plain, _ = predict_probs(learn)
    torch.testing.assert_close(probs[3], plain)
    assert not torch.allclose(probs[0], plain)  # the augmented views differ from the plain one
    aug, plain_again = tta(learn, n=3, beta=None, seed=1)[0]
    torch.testing.assert_close(aug, probs[:3].mean(0))
    torch.testing.assert_close(plain_again, plain)
    torch.testing.assert_close(tta(learn, n=3, seed=1)[0], 0.75 * aug + 0.25 * plain)
    torch.testing.assert_close(tta(learn, n=3, use_max=True, seed=1)[0],
                               torch.maximum(probs[:3].amax(0), plain))
    with pytest.raises(ValueError, match="n=0"):
        tta(learn, n=0)


def test_prob_metrics_on_known_probabilities():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    m = prob_metrics(probs, torch.tensor([0, 0]))
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["nll"] == pytest.approx(-(torch.tensor(0.9).log() + torch.tensor(0.4).log()).item() / 2)


# -- with a real Learner on the tiny folder ------------------------------------------------
def test_real_learner_tta_kinds_sizes_and_training_rng(tiny_folder):
    from vivace.data import make_dataloaders
    dls = make_dataloaders(tiny_folder, size_px=8, valid_size_px=16, presize_px=24, batch_size=4, valid_batch_size=8, seed=0, device="cpu",
                           workers=1, progress=False)  # training crops smaller than validation's
    model = SizeSpy()
    learn = Learner(dls, model)
    rng = learn.dls.train.transform.resize.generator.get_state()
    probs, y = tta(learn, n=2)
    assert probs.shape == (12, 3) and y.shape == (12,)
    torch.testing.assert_close(probs.sum(-1), torch.ones(12))
    assert set(model.sizes) == {16}  # augmented and plain views at the validation size
    assert torch.equal(learn.dls.train.transform.resize.generator.get_state(), rng)
    assert learn.dls.train.size == 8
    for kind in ("none", "augment", "flip", "five-crop"):
        model.sizes.clear()
        probs, _ = tta_probs(learn, kind, size=24)  # larger than trained: the cache is 24 px
        assert probs.shape == (12, 3) and set(model.sizes) == {24}
    plain, _ = predict_probs(learn)
    torch.testing.assert_close(plain, learn.get_preds()[0].softmax(-1))  # same as the validation pass


def test_size_is_bounded_by_the_cache_and_kinds_are_checked(tiny_dls):
    learn = Learner(tiny_dls, SizeSpy())
    with pytest.raises(ValueError, match="presize"):
        predict_probs(learn, size=32)
    with pytest.raises(ValueError, match="five-crop"):
        tta_probs(learn, "ten-crop")
