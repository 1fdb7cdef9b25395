"""LKConv2d and convert_model."""

import pytest
import torch
from torch import nn

from lkconv import LKConv2d, convert_model


def test_requires_depthwise():
    with pytest.raises(ValueError, match="groups == in_channels == out_channels"):
        LKConv2d(8, 8, 7)
    with pytest.raises(ValueError, match="groups"):
        LKConv2d(8, 16, 7, groups=8)
    LKConv2d(8, 8, 7, padding=3, groups=8)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular", "replicate"])
@pytest.mark.parametrize("padding", [3, "same", (1, 2)])
def test_matches_conv2d(padding_mode, padding):
    if padding == "same" and padding_mode != "zeros":
        padding = 3
    ref = nn.Conv2d(6, 6, 7, padding=padding, groups=6, padding_mode=padding_mode)
    ours = LKConv2d.from_conv2d(ref)
    assert ours.weight is ref.weight and ours.bias is ref.bias
    x = torch.randn(2, 6, 12, 11)
    torch.testing.assert_close(ours(x), ref(x))


def test_state_dict_moves_both_ways():
    conv = nn.Conv2d(4, 4, (5, 3), padding=(2, 1), groups=4, bias=False)
    lk = LKConv2d(4, 4, (5, 3), padding=(2, 1), groups=4, bias=False)
    lk.load_state_dict(conv.state_dict())
    conv2 = nn.Conv2d(4, 4, (5, 3), padding=(2, 1), groups=4, bias=False)
    conv2.load_state_dict(lk.state_dict())
    assert torch.equal(conv2.weight, conv.weight)
    assert list(lk.state_dict()) == list(conv.state_dict())


def test_gradients_flow_to_parameters():
    m = LKConv2d(3, 3, 13, padding=6, groups=3)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    m(x).square().mean().backward()
    ref = nn.Conv2d(3, 3, 13, padding=6, groups=3)
    ref.load_state_dict(m.state_dict())
    xr = x.detach().requires_grad_()
    ref(xr).square().mean().backward()
    torch.testing.assert_close(m.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m.bias.grad, ref.bias.grad)
    torch.testing.assert_close(x.grad, xr.grad)


def test_convert_model_swaps_only_eligible_convs():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),                    # not depthwise
        nn.Conv2d(8, 8, 7, padding=3, groups=8),          # eligible
        nn.Conv2d(8, 8, 3, padding=1, groups=8),          # too small
        nn.Sequential(nn.Conv2d(8, 8, (13, 5), padding=(6, 2), groups=8)),  # eligible, nested
    )
    keys = list(model.state_dict())
    x = torch.randn(1, 3, 16, 16)
    before = model(x)
    out = convert_model(model, min_kernel_size=7)
    assert out is model
    assert [type(m) for m in (model[0], model[1], model[2], model[3][0])] == [nn.Conv2d, LKConv2d, nn.Conv2d,
                                                                              LKConv2d]
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


def test_convert_model_not_inplace_leaves_original():
    model = nn.Sequential(nn.Conv2d(4, 4, 9, padding=4, groups=4))
    new = convert_model(model, inplace=False)
    assert type(model[0]) is nn.Conv2d and type(new[0]) is LKConv2d


def test_convert_timm_convnext_atto_k13():
    timm = pytest.importorskip("timm")
    model = timm.create_model("convnext_atto", kernel_sizes=13, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    convert_model(model)
    n_lk = sum(isinstance(m, LKConv2d) for m in model.modules())
    assert n_lk == sum(model.depths) if hasattr(model, "depths") else n_lk > 0
    assert n_lk == 2 + 2 + 6 + 2  # convnext_atto depths
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # State dicts load both ways.
    model.load_state_dict(state)
    stock = timm.create_model("convnext_atto", kernel_sizes=13, num_classes=10)
    stock.load_state_dict(model.state_dict())
