import pytest
import torch
import torch.nn.functional as F

from vivace.metrics import accuracy, calibration_error, error_rate, nll, reliability_bins, top_k_accuracy


def test_accuracy_and_error_rate_on_known_inputs():
    preds = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = torch.tensor([0, 1, 1, 1])
    assert accuracy(preds, y).item() == pytest.approx(0.75)
    assert error_rate(preds, y).item() == pytest.approx(0.25)
    assert accuracy(preds, F.one_hot(y, 2).float()).item() == pytest.approx(0.75)


def test_top_k():
    preds = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    y = torch.tensor([1, 0])
    assert top_k_accuracy(preds, y, 1).item() == 0.0
    assert top_k_accuracy(preds, y, 2).item() == pytest.approx(0.5)
    assert top_k_accuracy(preds, y, 3).item() == 1.0


def test_nll():
    logits, y = torch.randn(5, 4), torch.randint(0, 4, (5,))
    assert torch.allclose(nll(logits, y), F.cross_entropy(logits, y))


def test_calibration_error_known_values():
    # Two samples, both predicted with confidence ~0.9 (same bin): one right, one wrong -> |0.5 - 0.9|.
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    logits = p.log()
    y = torch.tensor([0, 1])
    assert calibration_error(logits, y).item() == pytest.approx(0.4, abs=1e-5)
    # Perfect confidence and always right -> 0.
    sure = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert calibration_error(sure, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-6)
    conf, acc, count = reliability_bins(logits, y, 10)
    assert count.sum().item() == 2 and acc[count > 0].tolist() == pytest.approx([0.5])
    assert conf[count > 0].tolist() == pytest.approx([0.9])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_calibration_on_non_finite_logits_is_nan_not_a_crash(bad):
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    logits[1, 1] = bad  # softmax of the row is NaN: no confidence to bin
    y = torch.tensor([0, 1, 2])
    assert calibration_error(logits, y).isnan()
    conf, acc, count = reliability_bins(logits, y, 10)
    assert count.sum().item() == 3 and conf.isnan().any()
    assert calibration_error(torch.full((3, 3), float("nan")), y).isnan()
