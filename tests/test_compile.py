"""The custom ops under torch.library.opcheck and torch.compile(fullgraph=True)."""

import pytest
import torch
from torch import nn

import lkconv
from lkconv import ops

SAMPLES = [
    dict(shape=(2, 3, 9, 10), kernel=(5, 5), padding=[2, 2, 2, 2], bias=True, channels_last=False),
    dict(shape=(1, 4, 7, 7), kernel=(4, 3), padding=[1, 2, 1, 1], bias=False, channels_last=True),
]


@pytest.mark.parametrize("sample", SAMPLES, ids=["nchw", "channels_last"])
def test_opcheck(sample):
    x = torch.randn(sample["shape"], requires_grad=True)
    if sample["channels_last"]:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(sample["shape"][1], 1, *sample["kernel"], requires_grad=True)
    b = torch.randn(sample["shape"][1], requires_grad=True) if sample["bias"] else None
    pad, unit = sample["padding"], [1, 1]
    torch.library.opcheck(ops.depthwise_conv2d_fwd, (x, w, b, pad, unit, unit))
    y = ops.depthwise_conv2d_fwd(x, w, b, pad, unit, unit)
    g = torch.randn_like(y)
    torch.library.opcheck(ops.depthwise_conv2d_bwd_input, (g, w.detach(), list(sample["shape"][2:]), pad, unit,
                                                           unit))
    torch.library.opcheck(ops.depthwise_conv2d_bwd_weight, (g, x.detach(), list(sample["kernel"]), pad, unit,
                                                            unit))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = lkconv.LKConv2d(8, 8, 7, padding=3, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.pw(torch.relu(self.dw(x))) + x


def test_torch_compile_fullgraph_cpu():
    torch._dynamo.reset()
    model = Block()
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    ref = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert model.dw.weight.grad is not None and x.grad is not None


def test_torch_compile_inductor_cpu():
    torch._dynamo.reset()
    model = Block().eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
