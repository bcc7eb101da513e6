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


def test_generalized_cross_entropy_spans_cross_entropy_to_mean_absolute_error():
    from vivace.losses import CrossEntropy, GeneralizedCrossEntropy
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 10), torch.randint(0, 10, (16,))
    p_label = logits.softmax(-1).gather(1, labels[:, None]).squeeze(1)
    assert torch.allclose(GeneralizedCrossEntropy(1e-6)(logits, labels), CrossEntropy()(logits, labels), atol=1e-4)
    assert torch.allclose(GeneralizedCrossEntropy(1.0)(logits, labels), (1 - p_label).mean())
    one_hot = torch.nn.functional.one_hot(labels, 10).float()  # soft targets (Mixup) read the same
    assert torch.allclose(GeneralizedCrossEntropy(0.7, 0.1)(logits, one_hot), GeneralizedCrossEntropy(0.7, 0.1)(logits, labels))


def test_generalized_cross_entropy_pulls_less_on_a_label_the_model_finds_unlikely():
    from vivace.losses import GeneralizedCrossEntropy
    logits = torch.tensor([[4.0, 0.0, 0.0]] * 2, requires_grad=True)  # the model says class 0
    labels = torch.tensor([0, 1])  # agreed with; likely wrong
    F.cross_entropy(logits, labels).backward()
    ce_grad, logits.grad = logits.grad.clone(), None
    GeneralizedCrossEntropy(0.7)(logits, labels).backward()
    p = torch.tensor([4.0, 0.0, 0.0]).softmax(-1)
    # L_q's gradient is cross-entropy's times p(label)^q, sample by sample: the likely wrong label pulls 16x less.
    assert torch.allclose(logits.grad[0], ce_grad[0] * p[0] ** 0.7, atol=1e-6)
    assert torch.allclose(logits.grad[1], ce_grad[1] * p[1] ** 0.7, atol=1e-6)


def test_the_recipe_picks_the_loss_and_several_labels_refuse_gce():
    from vivace.losses import GeneralizedCrossEntropy, make_loss
    assert isinstance(make_loss(0.1, gce_q=0.7), GeneralizedCrossEntropy)
    with pytest.raises(ValueError, match="gce_q=0.7 is for one label per image"):
        make_loss(0.1, gce_q=0.7, multi_label=True)
