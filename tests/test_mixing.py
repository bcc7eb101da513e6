"""Tests for vivace.mixing: lambda distribution, formulas, soft targets, loss equality, callbacks."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vivace.techniques import CutMix, Mixup, MixupOrCutMix
from vivace.learner import FitState
from vivace.mixing import cutmix, cutmix_boxes, mix_loss, mixup, mixup_params

C = 5


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data(b=6, seed=0):
    g = gen(seed)
    x = torch.rand(b, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, C, (b,), generator=g)


def soft_ce(pred, target):
    return -(target * F.log_softmax(pred, dim=1)).sum(1).mean()


def test_lambda_distribution_is_folded_beta():
    lam, perm = mixup_params(20000, alpha=0.4, generator=gen())
    assert (lam >= 0.5).all() and (lam <= 1).all()
    torch.manual_seed(0)  # an independent reference sampler: torch.distributions
    raw = torch.distributions.Beta(0.4, 0.4).sample((20000,))
    ref = torch.maximum(raw, 1 - raw)
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    torch.testing.assert_close(lam.quantile(q), ref.quantile(q), atol=0.015, rtol=0)
    assert lam.mean().item() == pytest.approx(ref.mean().item(), abs=0.005)
    assert sorted(perm.tolist()) == list(range(20000))


def test_mixup_matches_formula_and_targets_sum_to_one():
    x, y = data()
    xm, ym = mixup(x, y, C, alpha=0.4, generator=gen(3))
    lam, perm = mixup_params(6, 0.4, gen(3))  # same draws in the same order
    w = lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(xm, w * x + (1 - w) * x[perm])
    expected = lam[:, None] * F.one_hot(y, C) + (1 - lam[:, None]) * F.one_hot(y[perm], C)
    torch.testing.assert_close(ym, expected.float())
    torch.testing.assert_close(ym.sum(1), torch.ones(6))
    assert xm.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_target_loss_equals_two_term_mixture(smoothing):
    x, y = data(b=7)
    pred = torch.randn(7, C, generator=gen(5))
    _, ym = mixup(x, y, C, alpha=0.4, generator=gen(2))
    lam, perm = mixup_params(7, 0.4, gen(2))
    smooth = ym * (1 - smoothing) + smoothing / C  # label smoothing is linear in the target too

    def per_item(p, t):
        return F.cross_entropy(p, t, reduction="none", label_smoothing=smoothing)
    two_term = mix_loss(per_item, pred, y, y[perm], lam)
    torch.testing.assert_close(soft_ce(pred, smooth), two_term)


@pytest.mark.parametrize("b", [1, 3, 5])
def test_odd_and_single_batches(b):
    x, y = data(b=b)
    for fn in (mixup, cutmix):
        xm, ym = fn(x, y, C, generator=gen())
        assert xm.shape == x.shape and ym.shape == (b, C)
        torch.testing.assert_close(ym.sum(1), torch.ones(b))
    if b == 1:  # the only partner is itself: nothing changes
        torch.testing.assert_close(mixup(x, y, C, generator=gen())[0], x)


def test_soft_label_input_is_mixed_directly():
    x, _ = data()
    y_soft = torch.softmax(torch.randn(6, C, generator=gen(1)), dim=1)
    _, ym = mixup(x, y_soft, C, generator=gen(4))
    lam, perm = mixup_params(6, 0.4, gen(4))
    torch.testing.assert_close(ym, lam[:, None] * y_soft + (1 - lam[:, None]) * y_soft[perm])
    with pytest.raises(ValueError, match="n_classes"):
        mixup(x, y_soft, C + 1)


def test_cutmix_box_area_matches_lambda_and_outside_untouched():
    b = 16
    x = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 12, 10).clone()
    y = torch.arange(b)  # label i <-> pixel value i + 1, so a pixel names its source image
    xm, ym = cutmix(x, y, b, alpha=1.0, generator=gen(7))
    for i in range(b):
        own = xm[i] == i + 1  # (3, H, W)
        assert own.float().mean().item() == pytest.approx(ym[i, i].item(), abs=1e-6)
        pasted = ~own[0]
        if pasted.any():  # the changed pixels form one filled rectangle
            rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
            assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            assert len(torch.unique(xm[i][:, pasted])) == 1  # from a single partner
    assert (ym.diagonal() < 1).any()


def test_cutmix_boxes_clip_and_lambda_from_clipped_area():
    boxes, lam = cutmix_boxes(500, 12, 10, alpha=1.0, generator=gen())
    top, bottom, left, right = boxes.unbind(1)
    assert (top >= 0).all() and (bottom <= 12).all() and (left >= 0).all() and (right <= 10).all()
    torch.testing.assert_close(lam, 1 - ((bottom - top) * (right - left)).float() / 120)
    assert lam.min() < 0.3 and lam.max() == 1.0  # big boxes happen, some clip to nothing


def test_bad_alpha_and_inputs_raise():
    x, y = data()
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            mixup(x, y, C, alpha=bad)
        with pytest.raises(ValueError, match="alpha"):
            Mixup(alpha=bad)
        with pytest.raises(ValueError, match="alpha"):
            CutMix(alpha=bad)
    with pytest.raises(ValueError, match="mixup_alpha"):
        MixupOrCutMix(mixup_alpha=0.0)
    with pytest.raises(ValueError, match="switch_prob"):
        MixupOrCutMix(switch_prob=1.5)
    with pytest.raises(ValueError, match="float"):
        mixup((x * 255).to(torch.uint8), y, C)


@pytest.mark.parametrize("cb", [Mixup(seed=0), CutMix(seed=0), MixupOrCutMix(seed=0)])
def test_callbacks_transform_training_batches_only(cb):
    x, y = data()
    assert cb.order == 0
    xt, yt = cb.transform_batch(SimpleNamespace(state=FitState(training=True), n_classes=C), x, y)
    assert xt.shape == x.shape and yt.shape == (6, C) and not torch.equal(xt, x)
    xv, yv = cb.transform_batch(SimpleNamespace(state=FitState(training=False), n_classes=C), x, y)
    assert xv is x and yv is y


def test_mixup_or_cutmix_uses_both_and_is_seeded():
    learn = SimpleNamespace(state=FitState(training=True), n_classes=C)
    x, y = data()
    kinds = set()
    for _ in range(20):
        xm, _ = MixupOrCutMix(seed=len(kinds)).transform_batch(learn, x, y)
        kinds.add("cutmix" if torch.isin(xm, x).all() else "mixup")  # cutmix only moves pixels
    assert kinds == {"cutmix", "mixup"}
    a, b = MixupOrCutMix(seed=1), MixupOrCutMix(seed=1)
    assert torch.equal(a.transform_batch(learn, x, y)[0], b.transform_batch(learn, x, y)[0])


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_cutmix_lambda_distribution_matches_an_independent_reference(alpha):
    n, side = 20000, 64
    _, lam = cutmix_boxes(n, side, side, alpha=alpha, generator=gen())
    # The CutMix paper's sampler in numpy: side fraction sqrt(1 - Beta), centre uniform, box clipped.
    rng = np.random.default_rng(0)
    cut = np.floor(side * np.sqrt(1 - rng.beta(alpha, alpha, (n, 1)))).astype(int)  # (n, 1) box side
    start = rng.integers(0, side, (n, 2)) - cut // 2  # (n, 2) top, left
    lengths = np.clip(start + cut, 0, side) - np.clip(start, 0, side)
    ref = torch.from_numpy(1 - lengths.prod(1) / side**2).float()
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    torch.testing.assert_close(lam.quantile(q), ref.quantile(q), atol=0.02, rtol=0)
    assert lam.mean().item() == pytest.approx(ref.mean().item(), abs=0.01)


def test_cutmix_soft_target_loss_equals_two_term_mixture():
    x, y = data(b=7)
    pred = torch.randn(7, C, generator=gen(5))
    _, ym = cutmix(x, y, C, alpha=1.0, generator=gen(2))
    g = gen(2)  # the same draws in the same order: boxes (and lam), then the partner permutation
    _, lam = cutmix_boxes(7, 8, 8, 1.0, g)
    perm = torch.randperm(7, generator=g)
    two_term = mix_loss(lambda p, t: F.cross_entropy(p, t, reduction="none"), pred, y, y[perm], lam)
    torch.testing.assert_close(soft_ce(pred, ym), two_term)
