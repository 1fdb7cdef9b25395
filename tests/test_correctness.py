"""Forward, backward-input, backward-weight and bias gradient of every backend against a float64 reference,
over the kernel sizes, maps, layouts and padding forms of the contract (see cases.py)."""

import pytest
import torch
import torch.nn.functional as F

import lkconv
from cases import Case, cases, make_inputs
from conftest import backend_available
from reference import assert_within_torch_error, conv_with_grads, round_to_tf32, rule_oracle, unfold_conv


def run_case(case, backend, dtype, device="cpu", tf32=False, nchw_reference=False):
    """tf32: the backend computes float32 as TF32 (opt-in), so PyTorch's own error is taken on TF32-rounded
    operands. nchw_reference: PyTorch's own error from its NCHW path (its 16-bit channels_last CPU backward takes
    minutes at some long-kernel shapes)."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} unavailable: {lkconv.available_backends()[backend]}")
    x64, x = make_inputs(case, dtype, device)
    w = torch.randn(case.c, 1, case.kh, case.kw, device=device).to(dtype)
    b = torch.randn(case.c, device=device).to(dtype) if case.bias else None
    y64 = F.conv2d(x64, w.double(), None if b is None else b.double(), 1, case.padding, 1, case.c)
    g = torch.randn_like(y64, dtype=torch.float32).to(dtype)
    ref = conv_with_grads(x64, w.double(), None if b is None else b.double(), g.double(), padding=case.padding,
                          fn=unfold_conv)
    x_ref, g_ref = (x.contiguous(), g.contiguous()) if nchw_reference else (x, g)
    if tf32:
        theirs = conv_with_grads(round_to_tf32(x_ref), round_to_tf32(w), b, round_to_tf32(g_ref),
                                 padding=case.padding)
    else:
        theirs = conv_with_grads(x_ref, w, b, g_ref, padding=case.padding)
    with lkconv.use_backend(backend):
        ours = conv_with_grads(x, w, b, g, padding=case.padding,
                               fn=lambda *a: lkconv.depthwise_conv2d(*a))
    for name, o, t, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, theirs, ref):
        if r is None:
            assert o is None
            continue
        assert_within_torch_error(o, t, r, f"{backend} {name}")
    # Outputs keep the input's memory format, like F.conv2d's (its forward is reliable everywhere).
    expected = F.conv2d(x, w, b, 1, case.padding, 1, case.c)
    cl = torch.channels_last
    assert ours[0].is_contiguous(memory_format=cl) == expected.is_contiguous(memory_format=cl) or min(
        x.shape[1:]) == 1


@pytest.mark.parametrize("case", cases(per_kernel=4), ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_cpu_backends_float32(case, backend):
    run_case(case, backend, torch.float32)


@pytest.mark.parametrize("case", cases(per_kernel=1), ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_cpu_backend_other_dtypes(case, dtype):
    run_case(case, "cpu", dtype)


# Both correlation cores of the CPU backend on every case (auto picks one by shape; here each is forced).
@pytest.mark.parametrize("case", cases(per_kernel=2), ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ["planes", "channels", "channels_in_place"])
def test_cpu_correlation_cores(case, algorithm):
    from lkconv.backends.cpu import cpu_algorithm

    with cpu_algorithm(algorithm):
        run_case(case, "cpu", torch.float32)
        if case.c <= 3:
            run_case(case, "cpu", torch.float64)


# The Triton interpreter is slow: small maps and few channels, every kernel family still covered.
TRITON_CASES = [c for c in cases(per_kernel=2, max_channels=3, max_map=16)]


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: c.id)
def test_triton_float32(case):
    run_case(case, "triton", torch.float32)


@pytest.mark.parametrize("case", cases(per_kernel=1, max_channels=3, max_map=9, max_kernel=13), ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_triton_half_types(case, dtype):
    run_case(case, "triton", dtype)


def test_triton_backend_runs_nchw_calls_as_cuda_core_gemms():
    """NCHW calls run the Toeplitz/Hankel GEMMs with IEEE fp32 products (FMAs on the CUDA cores); channels_last
    calls the direct kernels (the cases above cover both)."""
    from lkconv.backends import BACKENDS
    from lkconv.geometry import plan

    x, w = torch.randn(1, 4, 16, 16), torch.randn(4, 1, 7, 7)
    module, kwargs = BACKENDS["triton"]._launcher(plan(x, w, None, 1, 3, 1))
    assert module.__name__ == "lkconv.tensorcore_kernels" and kwargs == {"cuda_cores": True}
    module, kwargs = BACKENDS["triton"]._launcher(plan(x.contiguous(memory_format=torch.channels_last), w, None, 1,
                                                       3, 1))
    assert module.__name__ == "lkconv.triton_kernels" and kwargs == {}


@pytest.mark.parametrize("case", [c for c in TRITON_CASES if c.layout != "channels_last"][::2], ids=lambda c: c.id)
def test_triton_direct_kernels_for_calls_the_gemms_refuse(case, monkeypatch):
    """NCHW calls the GEMM launchers cannot index (over 65535 channels, an image of 2^31 elements) run the direct
    kernels: here every such case is sent there."""
    from lkconv import tensorcore_kernels as tc

    monkeypatch.setattr(tc, "gemm_refusals", lambda call: ["refused by the test"])
    run_case(case, "triton", torch.float32)


# The tensor-core kernels (Toeplitz/Hankel GEMMs on tl.dot) under the interpreter: every kernel family at 16 bits,
# plus the long sums of k = 51 and 63 (one case each), and float32 as TF32 once the user opts in.
TENSORCORE_CASES = cases(per_kernel=1, max_channels=3, max_map=16)
LONG_KERNEL_CASES = [Case(2, 2, 24, 32, 51, 51, "nchw", "same", True),  # 16-byte aligned rows: vector loads
                     Case(1, 2, 20, 40, 63, 63, "nchw", "same", False),
                     Case(1, 1, 16, 13, 63, 63, "channels_last", (31, 30), True),
                     Case(2, 1, 24, 16, 63, 5, "permuted", "same", False)]  # tall: the transposed launch


@pytest.mark.parametrize("case", TENSORCORE_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_tensorcore_half_types(case, dtype):
    run_case(case, "tensorcore", dtype, nchw_reference=True)


@pytest.mark.parametrize("case", LONG_KERNEL_CASES, ids=lambda c: c.id)
def test_tensorcore_long_kernels(case):
    run_case(case, "tensorcore", torch.bfloat16, nchw_reference=True)


@pytest.fixture
def tf32_opt_in():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("case", TRITON_CASES[::3], ids=lambda c: c.id)
def test_tensorcore_tf32_opt_in(case, tf32_opt_in):
    run_case(case, "tensorcore", torch.float32, tf32=True, nchw_reference=True)


def test_tensorcore_refuses_float32_without_opt_in():
    if not backend_available("tensorcore"):
        pytest.skip("tensorcore backend unavailable")
    assert torch.get_float32_matmul_precision() == "highest"
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 1, 5, 5)
    with lkconv.use_backend("tensorcore"), pytest.raises(lkconv.BackendNotSupportedError, match="TF32"):
        lkconv.depthwise_conv2d(x, w, padding=2)


EPS16 = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def test_tensorcore_refuses_what_its_grid_cannot_hold():
    if not backend_available("tensorcore"):
        pytest.skip("tensorcore backend unavailable")
    x, w = torch.randn(1, 70000, 1, 1, dtype=torch.bfloat16), torch.randn(70000, 1, 3, 3, dtype=torch.bfloat16)
    assert "65535" in lkconv.explain(x, w, padding=1)
    with lkconv.use_backend("tensorcore"), pytest.raises(lkconv.BackendNotSupportedError, match="65535"):
        lkconv.depthwise_conv2d(x, w, padding=1)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's own 0 * inf
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_tensorcore_non_finite_inputs_stay_local(dtype):
    """A Toeplitz product multiplies every input column by the band's zeros too; an Inf pixel must still reach
    only the outputs (and, backward, the taps) that read it: the tiles that go non-finite are recomputed."""
    if not backend_available("tensorcore"):
        pytest.skip("tensorcore backend unavailable")
    x = torch.randn(1, 2, 12, 20, dtype=dtype)
    x[0, 0, 0, 1] = float("inf")  # near a corner: some outputs and taps never meet it
    w = (torch.rand(2, 1, 5, 7) + 0.1).to(dtype)
    x64 = x.double().requires_grad_()
    ref = F.conv2d(x64, w.double(), None, 1, (2, 3), 1, 2)
    xr = x.clone().requires_grad_()
    wr = w.clone().requires_grad_()
    with lkconv.use_backend("tensorcore"):
        ours = lkconv.depthwise_conv2d(xr, wr, padding=(2, 3))
        g = torch.ones_like(ours)
        g[0, 1, 0, 1] = float("inf")  # a non-finite output gradient too (handled by the op layer)
        ours.backward(g)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(ref))
    assert not torch.isfinite(ours).all() and torch.isfinite(ours[0, 1]).all()
    ref.backward(g.double())
    w64 = w.double().requires_grad_()  # products with padding do not exist: the rule's weight gradient
    ref_w = torch.autograd.grad(rule_oracle(x.double(), w64, (2, 2, 3, 3)), w64, g.double())[0]
    assert torch.equal(torch.isfinite(xr.grad), torch.isfinite(x64.grad))
    assert torch.equal(torch.isfinite(wr.grad), torch.isfinite(ref_w))
    assert not torch.isfinite(wr.grad).all()
    # The recomputed tiles' finite values are right too: within one 16-bit step of the largest value (the sums are
    # exact products added in float32; Triton 3.8's interpreter converts float32 to bfloat16 by truncation, a
    # GPU rounds to nearest).
    for what, got, want in (("output", ours, ref), ("grad_input", xr.grad, x64.grad), ("grad_weight", wr.grad, ref_w)):
        real = torch.isfinite(want)
        err = (got.double()[real] - want.detach()[real]).abs().max().item()
        assert err <= 2 * EPS16[dtype] * want.detach()[real].abs().max().item(), what


def test_gradcheck_float64_cpu_kernels():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with lkconv.use_backend("cpu"):
        assert torch.autograd.gradcheck(lambda x, w, b: lkconv.depthwise_conv2d(x, w, b, padding="same"),
                                        (x, w, b))
        xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, w: lkconv.depthwise_conv2d(x, w, padding=(5, 1)), (xc, w))


def test_large_map_cpu():
    """A real stage shape (smaller batch): RepLKNet's first stage, k=31 on 56x56."""
    x = torch.randn(1, 8, 56, 56)
    w = torch.randn(8, 1, 31, 31)
    x64, w64 = x.double(), w.double()
    g = torch.randn(1, 8, 56, 56)
    with lkconv.use_backend("cpu"):
        ours = conv_with_grads(x, w, None, g, padding=15, fn=lambda *a: lkconv.depthwise_conv2d(*a))
    ref = conv_with_grads(x64, w64, None, g.double(), padding=15)
    theirs = conv_with_grads(x, w, None, g, padding=15)
    for name, o, t, r in zip(("output", "grad_input", "grad_weight"), ours, theirs, ref):
        assert_within_torch_error(o, t, r, name)


@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float64), ("cpu", torch.float32),
                                           ("triton", torch.float32)])
def test_non_finite_inputs_stay_local(backend, dtype):
    """An Inf pixel gives Inf/NaN exactly where F.conv2d does, not in outputs whose window misses it."""
    if not backend_available(backend):
        pytest.skip(f"backend {backend} unavailable")
    x = torch.randn(1, 2, 12, 12, dtype=dtype)
    x[0, 0, 3, 4] = float("inf")
    w = torch.rand(2, 1, 5, 5, dtype=dtype) + 0.1
    ref = F.conv2d(x, w, None, 1, 2, 1, 2)
    with lkconv.use_backend(backend):
        ours = lkconv.depthwise_conv2d(x, w, padding=2)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(ref))
    assert not torch.isfinite(ours).all()


@pytest.mark.parametrize("view", ["channel_slice", "column_step", "dense"])
@pytest.mark.parametrize("algorithm", ["auto", "channels"])
def test_channels_last_views_cpu(view, algorithm):
    """channels_last tensors and views whose pixels are not C values apart: the channel cores copy whole vectors
    of channels per pixel and write channels_last outputs in place, with a partial vector where C is not a
    multiple of the vector width."""
    from lkconv.backends.cpu import cpu_algorithm

    big = torch.randn(2, 45, 11, 26).contiguous(memory_format=torch.channels_last)
    x = {"channel_slice": big[:, 5:37], "column_step": big[:, :, :, ::2], "dense": big}[view]
    w, b = torch.randn(x.shape[1], 1, 7, 5), torch.randn(x.shape[1])
    g = torch.randn(x.shape).contiguous(memory_format=torch.channels_last)
    with lkconv.use_backend("cpu"), cpu_algorithm(algorithm):
        ours = conv_with_grads(x, w, b, g, padding=(3, 2), fn=lambda *a: lkconv.depthwise_conv2d(*a))
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    ref = conv_with_grads(x.double(), w.double(), b.double(), g.double(), padding=(3, 2), fn=unfold_conv)
    theirs = conv_with_grads(x, w, b, g, padding=(3, 2))
    for name, o, t, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, theirs, ref):
        assert_within_torch_error(o, t, r, f"{view} {name}")


@pytest.mark.parametrize("kernel", [(3, 3), (5, 2)])
@pytest.mark.parametrize("algorithm", ["planes", "channels"])
def test_every_width_and_height_cpu(kernel, algorithm):
    """Every map width/height up to 70 (all column/row blockings and tails of the vectorised kernels)."""
    from lkconv.backends.cpu import cpu_algorithm

    kh, kw = kernel
    for size in range(1, 71):
        for h, w in ((3, size), (size, 4)):
            x = torch.randn(2, 2, h, w)
            wt = torch.randn(2, 1, kh, kw)
            g = torch.randn(2, 2, h, w)
            with lkconv.use_backend("cpu"), cpu_algorithm(algorithm):
                ours = conv_with_grads(x, wt, None, g, padding="same", fn=lambda *a: lkconv.depthwise_conv2d(*a))
            ref = conv_with_grads(x.double(), wt.double(), None, g.double(), padding="same", fn=unfold_conv)
            theirs = conv_with_grads(x, wt, None, g, padding="same")
            for name, o, t, r in zip(("output", "grad_input", "grad_weight"), ours, theirs, ref):
                assert_within_torch_error(o, t, r, f"{h}x{w} {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("view", ["planes", "column_slice", "channel_slice"])
@pytest.mark.parametrize("size", [(7, 7), (14, 14), (5, 33), (28, 3)], ids=str)
def test_channel_cores_transpose_nchw_groups(size, view, dtype):
    """NCHW sources and outputs reach the channel cores through L x L transposes in registers (lane_transpose.h):
    whole planes as one run where a channel's rows are contiguous, row by row otherwise (a column slice), whole
    and partial groups of channels (16 + 4 float32 lanes, 8 + 8 + 4 float64), runs that are and are not a
    multiple of L values; forward (with bias) and every gradient."""
    from lkconv.backends.cpu import cpu_algorithm

    h, w = size
    big = torch.randn(2, 24, h, w + 2, dtype=dtype)
    x = {"planes": big[..., :w].contiguous(), "column_slice": big[..., 1:w + 1],
         "channel_slice": big[:, 2:22, :, :w].contiguous()[:, :20]}[view]
    c = x.shape[1]
    wt, b, g = torch.randn(c, 1, 5, 3, dtype=dtype), torch.randn(c, dtype=dtype), torch.randn(x.shape, dtype=dtype)
    with lkconv.use_backend("cpu"), cpu_algorithm("channels"):
        ours = conv_with_grads(x, wt, b, g, padding=(2, 1), fn=lambda *a: lkconv.depthwise_conv2d(*a))
    assert ours[0].is_contiguous()
    ref = conv_with_grads(x.double(), wt.double(), b.double(), g.double(), padding=(2, 1), fn=unfold_conv)
    theirs = conv_with_grads(x, wt, b, g, padding=(2, 1))
    for name, o, t, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, theirs, ref):
        assert_within_torch_error(o, t, r, f"{size} {view} {name}")


@pytest.mark.parametrize("kernel,padding", [((3, 3), "same"), ((5, 5), "same"), ((7, 5), "same"), ((3, 3), 0),
                                            ((5, 3), (1, 2)), ((2, 4), (0, 3))], ids=str)
@pytest.mark.parametrize("view", ["dense", "channel_slice"])
def test_channel_cores_reading_in_place_every_size(kernel, padding, view):
    """The channel cores reading a channels_last source in place (no gathered, zero-bordered copy): only the
    image is read, so the columns near its edges take their exact tap ranges (straight-line blocks for 3x3 and
    5x5 "same" padding, one column at a time otherwise). Every width and height up to 40, two vectors of
    channels, a dense tensor and a channel slice whose pixels are 64 values apart; forward and input gradient."""
    from lkconv.backends.cpu import cpu_algorithm

    kh, kw = kernel
    for size in range(1, 41):
        for h, w in ((5, size), (size, 6)):
            ph, pw = (kh // 2, kw // 2) if padding == "same" else (padding, padding) if isinstance(padding, int) \
                else padding
            if h + 2 * ph < kh or w + 2 * pw < kw:
                continue
            big = torch.randn(2, 64, h, w).contiguous(memory_format=torch.channels_last)
            x = big if view == "dense" else big[:, 16:48]
            wt, b = torch.randn(x.shape[1], 1, kh, kw), torch.randn(x.shape[1])
            out_shape = F.conv2d(x, wt, None, 1, padding, 1, x.shape[1]).shape
            g = torch.randn(out_shape).contiguous(memory_format=torch.channels_last)
            with lkconv.use_backend("cpu"), cpu_algorithm("channels_in_place"):
                ours = conv_with_grads(x, wt, b, g, padding=padding, fn=lambda *a: lkconv.depthwise_conv2d(*a))
            ref = conv_with_grads(x.double(), wt.double(), b.double(), g.double(), padding=padding, fn=unfold_conv)
            theirs = conv_with_grads(x, wt, b, g, padding=padding)
            for name, o, t, r in zip(("output", "grad_input"), ours, theirs, ref):
                assert_within_torch_error(o, t, r, f"{h}x{w} {name}")


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("view", ["dense", "channel_slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_channel_weight_gradient_every_size(k, view, dtype):
    """The channel-vectorised weight gradient (channels_last operands with whole vectors of channels, 3x3 and 5x5
    filters; where it does not apply, the plane cores): every map height and width up to 30 with "same" and zero
    padding, a dense tensor and a channel slice whose pixels are 64 values apart."""
    for size in range(1, 31):
        for (h, w), pad in (((4, size), k // 2), ((size, 5), k // 2), ((size, size), 0)):
            if h + 2 * pad < k or w + 2 * pad < k:
                continue
            big = torch.randn(3, 64, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
            x = big if view == "dense" else big[:, 16:48]
            wt = torch.randn(x.shape[1], 1, k, k, dtype=dtype)
            out_shape = F.conv2d(x, wt, None, 1, pad, 1, x.shape[1]).shape
            g = torch.randn(out_shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
            with lkconv.use_backend("cpu"):
                ours = conv_with_grads(x, wt, None, g, padding=pad, fn=lambda *a: lkconv.depthwise_conv2d(*a))
            ref = conv_with_grads(x.double(), wt.double(), None, g.double(), padding=pad, fn=unfold_conv)
            theirs = conv_with_grads(x, wt, None, g, padding=pad)
            assert_within_torch_error(ours[2], theirs[2], ref[2], f"{h}x{w} pad {pad} grad_weight")


def test_channel_weight_gradient_is_reproducible_across_threads():
    """Fixed tasks summed in a fixed order: the same bits with 1 and 2 threads."""
    x = torch.randn(3, 32, 19, 23).contiguous(memory_format=torch.channels_last)
    g = torch.randn(3, 32, 19, 23).contiguous(memory_format=torch.channels_last)
    from lkconv import _ext

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _ext._C.cpu_backward_weight(g, x, 3, 3, [1, 1, 1, 1])
        torch.set_num_threads(2)
        two = _ext._C.cpu_backward_weight(g, x, 3, 3, [1, 1, 1, 1])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


class _FixedConfig:
    """Stands in for an autotuned kernel and launches one given config: the interpreter's autotuner has only
    the first, and a GPU's autotuner picks among all of them."""

    def __init__(self, autotuned, config):
        self.fn, self.config, self.launches = autotuned.fn, config, 0

    def __getitem__(self, grid):
        meta = dict(self.config.kwargs)

        def launch(*args, **kwargs):
            self.launches += 1
            self.fn[grid(meta)](*args, **kwargs, **meta)
        return launch


@pytest.mark.parametrize("backend,dtype", [("tensorcore", torch.bfloat16), ("triton", torch.float32)], ids=str)
@pytest.mark.parametrize("which", ["correlate", "wgrad"])
def test_gemm_kernels_every_autotune_config(which, backend, dtype, monkeypatch):
    """Each block configuration a GPU's autotuner may pick computes the same convolution (under the
    interpreter, one warp): a 16-byte aligned NCHW map, a misaligned one and a tall filter; on the tensor cores
    (bfloat16) and as the `triton` backend's CUDA-core GEMMs (float32)."""
    if not backend_available(backend):
        pytest.skip(f"{backend} backend unavailable")
    from lkconv import tensorcore_kernels as tc

    blocks, names = ((tc.CORRELATE_BLOCKS, ("BLOCK_M", "BLOCK_N")) if which == "correlate"
                     else (tc.WGRAD_BLOCKS, ("BLOCK_I", "BLOCK_J", "BLOCK_X")))
    attr = "_toeplitz_correlate_kernel" if which == "correlate" else "_hankel_wgrad_kernel"
    import triton

    torch.manual_seed(0)
    for (n, c, h, w, kh, kw) in [(2, 2, 12, 24, 13, 13), (1, 2, 9, 11, 5, 7), (1, 1, 20, 16, 31, 3)]:
        x = torch.randn(n, c, h, w).to(dtype)
        wt = torch.randn(c, 1, kh, kw).to(dtype)
        g = torch.randn(n, c, h, w).to(dtype)
        pad = (kh // 2, kw // 2)
        x64, w64 = x.double().requires_grad_(), wt.double().requires_grad_()
        ref = F.conv2d(x64, w64, None, 1, pad, 1, c)
        ref.backward(g.double())
        theirs = conv_with_grads(x, wt, None, g, padding=pad)
        for block in blocks:
            fixed = _FixedConfig(getattr(tc, attr), triton.Config(dict(zip(names, block))))
            monkeypatch.setattr(tc, attr, fixed)
            xr, wr = x.clone().requires_grad_(), wt.clone().requires_grad_()
            with lkconv.use_backend(backend):
                y = lkconv.depthwise_conv2d(xr, wr, padding=pad)
                y.backward(g)
            assert fixed.launches, f"{attr} was not launched"
            pairs = ([(y, ref, theirs[0]), (xr.grad, x64.grad, theirs[1])] if which == "correlate"
                     else [(wr.grad, w64.grad, theirs[2])])
            for ours, exact, torch_result in pairs:
                if dtype == torch.float32:
                    assert_within_torch_error(ours, torch_result, exact.detach(), f"{block} {(h, w, kh, kw)}")
                    continue
                err = (ours.double() - exact.detach()).abs().max().item()
                # one bfloat16 step of the largest value: the interpreter truncates to bfloat16 (see above)
                assert err <= 2 * EPS16[torch.bfloat16] * exact.detach().abs().max().item(), (block, (h, w, kh, kw))
