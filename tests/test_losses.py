import pytest
import torch
import torch.nn.functional as F

from vivace.losses import CrossEntropy, LabelSmoothingCrossEntropy, smoothed_targets, soft_cross_entropy


def test_book_questions_on_smoothed_targets():
    t = smoothed_targets(torch.tensor([3]), 10, 0.1)[0]
    assert t[3].item() == pytest.approx(0.91)
    assert t[0].item() == pytest.approx(0.01)
    t5 = smoothed_targets(torch.tensor([1]), 5, 0.1)[0]
    assert torch.allclose(t5, torch.tensor([0.02, 0.92, 0.02, 0.02, 0.02]))


def test_label_smoothing_equals_formula_and_soft_target_ce():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    eps = 0.1
    logp = F.log_softmax(logits, -1)
    formula = (1 - eps) * F.nll_loss(logp, y) + eps * (-logp.mean(-1)).mean()
    explicit = -(smoothed_targets(y, 5, eps) * logp).sum(-1).mean()
    got = LabelSmoothingCrossEntropy(eps)(logits, y)
    assert torch.allclose(got, formula, atol=1e-6)
    assert torch.allclose(got, explicit, atol=1e-6)


def test_soft_targets_compose_with_smoothing():
    torch.manual_seed(1)
    logits = torch.randn(4, 3)
    y1, y2, lam = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2]), 0.7
    soft = lam * F.one_hot(y1, 3).float() + (1 - lam) * F.one_hot(y2, 3).float()
    loss = LabelSmoothingCrossEntropy(0.1)
    two_term = lam * loss(logits, y1) + (1 - lam) * loss(logits, y2)
    assert torch.allclose(loss(logits, soft), two_term, atol=1e-6)


def test_cross_entropy_hard_and_flat():
    logits, y = torch.randn(2, 3, 4), torch.randint(0, 4, (2, 3))
    assert torch.allclose(CrossEntropy()(logits, y), F.cross_entropy(logits.reshape(6, 4), y.reshape(6)))
    assert torch.allclose(soft_cross_entropy(logits[0], F.one_hot(y[0], 4).float()),
                          F.cross_entropy(logits[0], y[0]))


def test_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        LabelSmoothingCrossEntropy(1.5)
