"""GPU tests (marked `gpu`, skipped without CUDA): the CUDA and Triton kernels on a real device."""

import pytest
import torch

import lkconv
from cases import cases, make_inputs
from conftest import backend_available
from reference import assert_within_torch_error, conv_with_grads, unfold_conv

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ["cuda", "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _need(backend):
    if not backend_available(backend):
        pytest.skip(f"{backend}: {lkconv.available_backends()[backend]}")


def _check(x, x64, w, b, g, padding, backend):
    ref = conv_with_grads(x64, w.double(), None if b is None else b.double(), g.double(), padding=padding,
                          fn=unfold_conv)
    theirs = conv_with_grads(x, w, b, g, padding=padding)
    with lkconv.use_backend(backend):
        ours = conv_with_grads(x, w, b, g, padding=padding, fn=lambda *a: lkconv.depthwise_conv2d(*a))
    for name, o, t, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, theirs, ref):
        if r is not None:
            assert_within_torch_error(o, t, r, f"{backend} {name}")
    return ours


@pytest.mark.parametrize("case", cases(per_kernel=3), ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_core_cases(case, dtype, backend):
    _need(backend)
    x64, x = make_inputs(case, dtype, "cuda")
    w = torch.randn(case.c, 1, case.kh, case.kw, device="cuda").to(dtype)
    b = torch.randn(case.c, device="cuda").to(dtype) if case.bias else None
    g = torch.randn(unfold_conv(x64, w.double(), None, padding=case.padding).shape, device="cuda").to(dtype)
    _check(x, x64, w, b, g, case.padding, backend)


STAGES = [(128, 56, 31), (256, 28, 29), (512, 14, 27), (1024, 7, 13), (96, 56, 51), (768, 7, 51)]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"c{s[0]}_{s[1]}_k{s[2]}")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_stage_shapes(stage, layout, dtype, backend):
    _need(backend)
    c, size, k = stage
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, c, size, size, device="cuda").to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(c, 1, k, k, device="cuda").to(dtype)
    b = torch.randn(c, device="cuda").to(dtype)
    g = torch.randn(2, c, size, size, device="cuda").to(dtype)
    ours = _check(x, x.double(), w, b, g, k // 2, backend)
    assert ours[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_no_reads_outside_the_tensor(backend):
    """The input is a window of a NaN-filled buffer: any read outside the window poisons the result."""
    _need(backend)
    buf = torch.full((2, 8, 40, 40), float("nan"), device="cuda")
    x = buf[:, :, 5:25, 7:30]
    x.copy_(torch.randn_like(x))
    w = torch.randn(8, 1, 13, 13, device="cuda")
    g_buf = torch.full((2, 8, 40, 40), float("nan"), device="cuda")
    g = g_buf[:, :, 3:23, 4:27]
    g.copy_(torch.randn_like(g))
    with lkconv.use_backend(backend):
        y = lkconv.depthwise_conv2d(x, w, padding=6)
        gx = torch.ops.lkconv.depthwise_conv2d_bwd_input(g, w, [20, 23], [6, 6, 6, 6], [1, 1], [1, 1])
        gw = torch.ops.lkconv.depthwise_conv2d_bwd_weight(g, x, [13, 13], [6, 6, 6, 6], [1, 1], [1, 1])
    assert torch.isfinite(y).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_weight_grad_deterministic(backend):
    _need(backend)
    x = torch.randn(16, 64, 28, 28, device="cuda")
    g = torch.randn(16, 64, 28, 28, device="cuda")
    with lkconv.use_backend(backend):
        runs = [torch.ops.lkconv.depthwise_conv2d_bwd_weight(g, x, [29, 29], [14] * 4, [1, 1], [1, 1])
                for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_batch_256(backend):
    _need(backend)
    x = torch.randn(256, 32, 14, 14, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(32, 1, 13, 13, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(256, 32, 14, 14, device="cuda", dtype=torch.bfloat16)
    _check(x, x.double(), w, None, g, 6, backend)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_more_than_2_31_elements(backend):
    """A > 2^31-element input is either computed correctly (int64 offsets) or refused with a clear error."""
    _need(backend)
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs ~24 GiB free")
    n, c, h, w = 2, 1, 2**15, 2**15 + 8  # 2 * 2^30 + ... elements, bf16: ~4 GiB
    x = torch.zeros(n, c, h, w, device="cuda", dtype=torch.bfloat16)
    x[-1, 0, -3:, -3:] = 1
    wt = torch.ones(c, 1, 3, 3, device="cuda", dtype=torch.bfloat16)
    try:
        with lkconv.use_backend(backend):
            y = lkconv.depthwise_conv2d(x, wt, padding=1)
    except RuntimeError as exc:
        assert "too large" in str(exc) or "2^31" in str(exc), exc
        return
    assert y[-1, 0, -1, -1].item() == 4 and y[-1, 0, -2, -2].item() == 9
    assert y[0].abs().sum().item() == 0
