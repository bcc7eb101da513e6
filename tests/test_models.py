"""Tests for vivace.models: xresnet shapes, parameter counts, init, variants and layouts."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vivace.models import (MODELS, BlurPool2d, Conv2d, MaxBlurPool2d, Mish, ResBlock, SimpleSelfAttention,
                           SqueezeExcite, XResNet, act_layer, count_macs, count_params, create_model, layers,
                           stem_sizes, xresnet18, xresnet50)
from vivace.models.layers import mish_by_sigmoid

# Computed from the design; the n_out=1000 counts equal fastai's documented xresnet counts
# (docs.fast.ai/vision.models.xresnet.html, as quoted in n2cholas/jax-resnet tests) and
# timm's resnet{18,34,50,101,152}d. n_out=10 drops 990 * (features + 1).
PARAMS = {
    "xresnet18": {1000: 11_708_744, 10: 11_200_874},
    "xresnet34": {1000: 21_816_904, 10: 21_309_034},
    "xresnet50": {1000: 25_576_264, 10: 23_547_754},
    "xresnet101": {1000: 44_568_392, 10: 42_539_882},
    "xresnet152": {1000: 60_212_040, 10: 58_183_530},
    # fastai 2.8.12's xse_resnext50(n_out=10) has 25,550,618 parameters, state_dict shapes equal
    "xse_resnext50": {1000: 27_579_128, 10: 25_550_618},
}


def blocks(model: nn.Module) -> list[ResBlock]:
    return [m for m in model.modules() if isinstance(m, ResBlock)]


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN weights and statistics, so eval-mode comparisons exercise every branch."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
        if isinstance(m, SimpleSelfAttention):
            m.gamma.data.fill_(1e-3)


def test_registry_names_and_unknown_name():
    assert list(MODELS) == ["xresnet18", "xresnet34", "xresnet50", "xresnet101", "xresnet152", "xse_resnext50"]
    with pytest.raises(ValueError, match="xresnet18"):
        create_model("resnet9000")


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("n_out", [1000, 10])
def test_parameter_counts(name, n_out):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_model(name, n_out=n_out)
    assert count_params(model) == PARAMS[name][n_out]


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shape_grayscale(name):
    model = create_model(name, n_out=7, c_in=1)
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_last_bn_of_each_branch_is_zero_and_others_one():
    for model in (xresnet18(), xresnet50(self_attention=True)):
        for block in blocks(model):
            bns = [m for m in block.convpath.modules() if isinstance(m, nn.BatchNorm2d)]
            assert torch.all(bns[-1].weight == 0)
            assert all(torch.all(bn.weight == 1) for bn in bns[:-1])
            assert all(torch.all(bn.bias == 0) for bn in bns)


def test_resnet_d_shortcut():
    model = xresnet50()
    for b in blocks(model):
        strided = any(m.stride == (2, 2) for m in b.convpath.modules() if isinstance(m, nn.Conv2d))
        has_pool = len(b.idpath) > 0 and isinstance(b.idpath[0], nn.AvgPool2d)
        assert strided == has_pool
    pooled = [b for b in blocks(model) if len(b.idpath) == 2]
    assert len(pooled) == 3  # first block of stages 2, 3, 4
    for b in pooled:
        pool, proj = b.idpath
        assert pool.kernel_size == 2 and pool.ceil_mode
        assert proj[0].kernel_size == (1, 1) and proj[0].stride == (1, 1)
        assert isinstance(proj[1], nn.BatchNorm2d) and len(proj) == 2  # no activation
    # stage 1 changes width 64 -> 256 at stride 1: 1x1 conv only; later blocks: identity
    assert len(model[4][0].idpath) == 1 and model[4][0].idpath[0][0].kernel_size == (1, 1)
    assert all(len(b.idpath) == 0 for b in model[4][1:])
    assert all(len(b.idpath) == 0 for b in xresnet18()[4])


def test_stem_is_three_convs_32_32_64_then_maxpool():
    model = xresnet18(c_in=5)
    convs = [model[i][0] for i in range(3)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(5, 32), (32, 32), (32, 64)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert isinstance(model[3], nn.MaxPool2d) and model[3].stride == 2


@pytest.mark.parametrize("act, cls", [("relu", nn.ReLU), pytest.param("mish", Mish, marks=pytest.mark.slow),
                                      ("silu", nn.SiLU)])  # mish: its fused kernel compiles with the C++ compiler
def test_activation_choice(act, cls):
    model = xresnet18(act=act)
    kinds = {type(m) for m in model.modules()} & {nn.ReLU, Mish, nn.SiLU}
    assert kinds == {cls}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_unknown_activation_and_bad_options_raise():
    with pytest.raises(ValueError, match="relu"):
        act_layer("gelu")
    for bad in (dict(widen=0.0), dict(stem_widen=0.0), dict(p_dropout=1.0), dict(n_out=0), dict(act="tanh")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            xresnet18(**bad)
    with pytest.raises(ValueError, match="layers"):
        XResNet(1, [2, 2, 2])


@pytest.mark.parametrize("name, c", [("xresnet18", 64), ("xresnet50", 256)])
def test_self_attention_in_last_block_of_first_stage(name, c):
    plain, sa = create_model(name), create_model(name, self_attention=True)
    assert count_params(sa) - count_params(plain) == c * c + 1  # 1x1 conv + gamma
    attn = [m for m in sa.modules() if isinstance(m, SimpleSelfAttention)]
    assert len(attn) == 1 and attn[0] is sa[4][-1].convpath[-1]
    x = torch.randn(2, c, 8, 8)
    assert torch.equal(attn[0](x), x)  # gamma starts at 0: the identity
    assert sa(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_blur_pool_adds_no_params_and_no_strided_convs():
    plain, blur = xresnet18(), xresnet18(blur_pool=True)
    assert count_params(blur) == count_params(plain)
    assert all(m.stride == (1, 1) for m in blur.modules() if isinstance(m, nn.Conv2d))
    # stem conv, stem max-pool, and the strided conv of stages 2-4
    assert sum(isinstance(m, BlurPool2d) for m in blur.modules()) == 5
    x = torch.randn(2, 3, 48, 48)
    assert blur(x).shape == plain(x).shape == (2, 1000)
    feats_plain, feats_blur = plain[:-4](x), blur[:-4](x)
    assert feats_plain.shape == feats_blur.shape  # same resolutions through the net


def test_max_blur_pool_blurs_the_pools_only():
    plain, maxblur = xresnet50(), xresnet50(max_blur_pool=True)
    assert count_params(maxblur) == count_params(plain)
    strided = [m.stride for m in maxblur.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert strided == [m.stride for m in plain.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    # the stem's max-pool and the first block of stages 2-4 (their shortcuts' average pools)
    assert sum(isinstance(m, MaxBlurPool2d) for m in maxblur.modules()) == 4
    assert not any(isinstance(m, nn.AvgPool2d) for m in maxblur.modules())
    for side in (48, 49):  # odd sides round up, as the ceil-mode average pool did
        x = torch.randn(2, 3, side, side)
        assert maxblur[:-4](x).shape == plain[:-4](x).shape
    assert XResNet(**maxblur.config).config["max_blur_pool"] is True


def test_blur_pool_layer():
    pool = BlurPool2d(3)
    x = torch.ones(1, 3, 9, 9)
    y = pool(x)
    assert y.shape == (1, 3, 5, 5)
    assert torch.allclose(y[..., 1:-1, 1:-1], torch.ones(1, 3, 3, 3))  # a low-pass filter
    assert len(list(pool.parameters())) == 0 and "filt" not in pool.state_dict()


@pytest.mark.parametrize("name, expansion", [("xresnet18", 1), ("xresnet50", 4)])
def test_widen_half_halves_stage_widths(name, expansion):
    model = create_model(name, widen=0.5)
    outs = [stage[-1].convpath[-1][0].out_channels for stage in model[4:8]]
    assert outs == [w * expansion for w in (32, 64, 128, 256)]
    assert model[-1].in_features == 256 * expansion
    assert model[2][0].out_channels == 64  # the stem keeps its widths, as in fastai
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


@pytest.mark.parametrize("name, expansion, blur", [("xresnet18", 1, False), ("xresnet50", 4, True)])
def test_stem_widen_scales_the_stem_in_multiples_of_8(name, expansion, blur):
    model = create_model(name, widen=0.5, stem_widen=0.5, max_blur_pool=blur)
    assert [model[i][0].out_channels for i in range(3)] == [16, 16, 32]
    assert model[4][0].convpath[0][0].in_channels == 32  # stage 1 takes the narrower stem's output
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    assert stem_sizes(0.7) == (24, 24, 48) and stem_sizes(0.01) == (8, 8, 8)
    assert XResNet(**model.config).config["stem_widen"] == 0.5  # the config rebuilds it (export)
    assert count_macs(model, 128) < count_macs(create_model(name, widen=0.5), 128)


def test_init_is_deterministic_under_a_seed():
    torch.manual_seed(0)
    a = xresnet18(self_attention=True).state_dict()
    torch.manual_seed(0)
    b = xresnet18(self_attention=True).state_dict()
    torch.manual_seed(1)
    c = xresnet18(self_attention=True).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.0.weight"], c["0.0.weight"])


def test_conv_init_is_kaiming_normal_fan_in():
    torch.manual_seed(0)
    w = xresnet50()[5][0].convpath[1][0].weight  # 128 -> 128, 3x3: fan_in 1152
    assert abs(w.std().item() - (2 / w[0].numel()) ** 0.5) < 0.002
    assert abs(w.mean().item()) < 0.002


@pytest.mark.parametrize("kwargs", [dict(), pytest.param(dict(self_attention=True, blur_pool=True, act="mish"),
                                                  marks=pytest.mark.slow)])  # mish: a compiled kernel
def test_channels_last_matches_contiguous(kwargs):
    torch.manual_seed(0)
    model = xresnet18(n_out=10, **kwargs).eval()
    randomize_bn(model)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = xresnet18(n_out=10, self_attention=True, blur_pool=True)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model[-1].weight.grad.abs().sum() > 0


def test_count_macs_by_hand_and_for_xresnet18():
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))
    assert count_macs(tiny, 4) == 4 * 4 * 8 * 3 * 9 + 8 * 5
    model = xresnet18()
    assert count_macs(model, 128) == 670_945_280
    assert model.training  # mode restored


def test_slice_is_a_plain_sequential_keeping_names():
    model = xresnet18()
    body = model[:-4]  # everything before the pooling head
    assert type(body) is nn.Sequential
    assert list(body.state_dict())[0] == "0.0.weight"
    assert body(torch.randn(2, 3, 32, 32)).shape == (2, 512, 1, 1)
    assert isinstance(model[-1], nn.Linear)


def test_xse_resnext50_is_grouped_with_squeeze_excite_in_every_block():
    model = create_model("xse_resnext50", n_out=10)
    bs = blocks(model)
    assert len(bs) == 16 and all(isinstance(b.convpath[-1], SqueezeExcite) for b in bs)
    grouped = [b.convpath[1][0] for b in bs]  # each bottleneck's 3x3 conv
    assert all(c.groups == 32 and c.kernel_size == (3, 3) for c in grouped)
    first_of_stage = [grouped[i] for i in (0, 3, 7, 13)]  # stages of 3, 4, 6, 3 blocks
    assert [c.in_channels for c in first_of_stage] == [128, 256, 512, 1024]  # 32 groups x 4 per 64
    se = bs[0].convpath[-1]
    assert (se.reduce.in_channels, se.reduce.out_channels) == (256, 16)  # 256 / 16, rounded to 8
    rebuilt = XResNet(**model.config)  # export rebuilds models from their config
    assert count_params(rebuilt) == count_params(model)


def test_squeeze_excite_gates_channels_between_zero_and_one():
    se = SqueezeExcite(16, reduction=4)
    x = torch.rand(2, 16, 5, 5) + 0.1
    y = se(x)
    ratio = y / x
    assert y.shape == x.shape
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-6)  # one gate per channel
    assert (ratio > 0).all() and (ratio < 1).all()


def test_conv2d_takes_the_strided_1x1_case_out_of_bf16_autocast():
    """oneDNN's bf16 weight gradient of a strided conv on a 1x1 input is mostly non-finite (AMX)."""
    torch.manual_seed(0)
    conv = Conv2d(16, 8, 3, stride=2, padding=1, bias=False)
    reference = nn.Conv2d(16, 8, 3, stride=2, padding=1, bias=False)
    reference.load_state_dict(conv.state_dict())  # same parameters and keys as nn.Conv2d
    for _ in range(20):
        x = torch.randn(4, 16, 1, 1).contiguous(memory_format=torch.channels_last)
        g = torch.randn(4, 8, 1, 1)
        conv.weight.grad = reference.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.float32
        y.backward(g)
        reference(x).backward(g)
        torch.testing.assert_close(conv.weight.grad, reference.weight.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # any larger input stays in bf16
        assert conv(torch.randn(4, 16, 2, 2)).dtype == torch.bfloat16


def test_self_attention_runs_in_bf16_under_autocast_but_fp16_in_fp32():
    torch.manual_seed(0)
    sa = SimpleSelfAttention(16)
    sa.gamma.data.fill_(1e-3)
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = sa(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = sa(x.bfloat16())
        assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)
        # (x x^T) of activations ~100 reaches ~6e5, past fp16's 65504: inf, and 0 * inf = nan.
        sa.gamma.data.zero_()
        big = (x * 100).half()
        with torch.autocast("cpu", dtype=torch.float16):
            assert torch.isnan(sa.attend(big.flatten(2))).any()  # what fp16 would compute
            torch.testing.assert_close(sa(big), big)  # gamma 0: exactly the input


def test_mish_by_sigmoid_is_mish_everywhere():
    x = torch.cat([torch.linspace(-30, 30, 10001, dtype=torch.float64), torch.tensor([-1e4, 1e4], dtype=torch.float64)])
    torch.testing.assert_close(mish_by_sigmoid(x), F.mish(x), rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # compiles the fused kernel (seconds; minutes on a cold compiler cache)
def test_mish_module_matches_f_mish_forward_and_backward():
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 5, 7) * 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    ref = x.detach().clone().requires_grad_()
    g = torch.randn(2, 8, 5, 7)
    y = Mish()(x)  # the fused kernel where a C++ compiler exists (it does in CI)
    y.backward(g)
    F.mish(ref).backward(g)
    torch.testing.assert_close(y, F.mish(ref))
    torch.testing.assert_close(x.grad, ref.grad)


def test_mish_without_a_compiler_is_f_mish(monkeypatch):
    monkeypatch.setattr(layers.shutil, "which", lambda name: None)
    layers.fused_mish.cache_clear()
    try:
        assert layers.fused_mish() is None
        x = torch.randn(3, 4)
        assert torch.equal(Mish()(x), F.mish(x))
    finally:
        layers.fused_mish.cache_clear()  # the next caller finds the compiler again
