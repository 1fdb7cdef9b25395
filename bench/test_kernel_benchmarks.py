"""pytest-benchmark benchmarks (`pytest bench --benchmark-only`); not part of the default test run.

The RepLKNet-31B first stage at batch 1 on the CPU, lkconv against F.conv2d, per pass and layout."""

import pytest
import torch
import torch.nn.functional as F

import lkconv

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _inputs(layout, k=31):
    x = torch.randn(1, 128, 56, 56).contiguous(memory_format=LAYOUTS[layout])
    w = torch.randn(128, 1, k, k)
    return x, w, torch.randn_like(x)


def _impl(name):
    if name == "torch":
        return lambda x, w: F.conv2d(x, w, None, 1, w.shape[-1] // 2, 1, x.shape[1])
    return lambda x, w: lkconv.depthwise_conv2d(x, w, padding=w.shape[-1] // 2)


@pytest.mark.parametrize("impl", ["lkconv", "torch"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_forward(benchmark, impl, layout):
    x, w, _ = _inputs(layout)
    f = _impl(impl)
    benchmark(lambda: f(x, w))


@pytest.mark.parametrize("impl", ["lkconv", "torch"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_forward_backward(benchmark, impl, layout):
    x, w, g = _inputs(layout)
    x.requires_grad_()
    w.requires_grad_()
    f = _impl(impl)
    benchmark.pedantic(lambda: torch.autograd.grad(f(x, w), (x, w), g), rounds=3, iterations=1)
