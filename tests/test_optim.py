import pytest
import torch
from torch import nn

from vivace.optim import Lookahead, make_optimizer, param_groups, set_hyper


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def test_no_weight_decay_on_batchnorm_and_bias():
    model = small_model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4


@pytest.mark.parametrize("name", ["sgd", "adamw", "ranger"])
def test_each_optimizer_lowers_the_loss(name):
    model = small_model()
    opt = make_optimizer(model, name, lr=1e-2, weight_decay=1e-4)
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 2, (16,))
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_adamw_decay_is_decoupled_and_skips_bn():
    model = small_model()
    opt = make_optimizer(model, "adamw", lr=0.1, weight_decay=0.5)
    bn_before = model[1].weight.detach().clone()
    conv_before = model[0].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only weight decay can move a parameter
    opt.step()
    assert torch.equal(model[1].weight, bn_before)
    assert torch.allclose(model[0].weight, conv_before * (1 - 0.1 * 0.5))


def test_lookahead_pulls_towards_slow_weights_every_k_steps():
    w = nn.Parameter(torch.zeros(1))
    inner = torch.optim.SGD([w], lr=1.0)
    opt = Lookahead(inner, k=2, alpha=0.5)
    for step in range(2):
        w.grad = torch.tensor([-1.0])  # each fast step moves w by +1
        opt.step()
    # fast weights reached 2, slow was 0: slow += 0.5 * (2 - 0) = 1, fast reset to 1
    assert w.item() == pytest.approx(1.0)
    state = opt.state_dict()
    opt2 = Lookahead(torch.optim.SGD([w], lr=1.0), k=2, alpha=0.5)
    opt2.load_state_dict(state)
    assert opt2.steps == 2 and opt2.slow[0][0].item() == pytest.approx(1.0)


def test_set_hyper_sets_lr_and_momentum_or_beta():
    model = small_model()
    sgd, adam = make_optimizer(model, "sgd"), make_optimizer(model, "adamw")
    set_hyper(sgd, 0.5, 0.8)
    set_hyper(adam, 0.25, 0.85)
    assert all(g["lr"] == 0.5 and g["momentum"] == 0.8 for g in sgd.param_groups)
    assert all(g["lr"] == 0.25 and g["betas"][0] == 0.85 for g in adam.param_groups)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="'lamb'"):
        make_optimizer(small_model(), "lamb")


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_and_foreach_optimizers_take_the_same_step(name):
    results = []
    for impl in ({"foreach": True}, {"fused": True}):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
        opt = make_optimizer(model, name, lr=1e-2, weight_decay=1e-2, **impl)
        for _ in range(3):
            loss = model(torch.randn(16, 4, generator=torch.Generator().manual_seed(1))).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    # The same update computed in another order: equal to rounding (Adam divides by sqrt(v) + 1e-6).
    torch.testing.assert_close(results[0], results[1], rtol=1e-3, atol=1e-4)


def test_ranger_has_no_fused_implementation():
    with pytest.raises(ValueError, match="'ranger' has no fused implementation"):
        make_optimizer(torch.nn.Linear(2, 2), "ranger", fused=True)
