"""The GPU kernels' correctness suite, on three targets: the CUDA kernels on a GPU, the Triton kernels on a GPU
(both marked `gpu`, skipped without one), and the CUDA kernels under the CUDA execution-model emulation on the
CPU (`cuda_emu`, in every test run: the same sources and launchers, with barrier/race/bounds checks). The
emulated target runs the same cases at shapes small enough for an emulator: the same map sizes (which pick the
tile configurations) with fewer channels and images."""

import pytest
import torch

import lkconv
from cases import cases, make_inputs
from conftest import backend_available
from reference import assert_within_torch_error, conv_with_grads, unfold_conv

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TARGETS = [pytest.param("cuda", marks=pytest.mark.gpu, id="cuda"),
           pytest.param("triton", marks=pytest.mark.gpu, id="triton"),
           pytest.param("tensorcore", marks=pytest.mark.gpu, id="tensorcore"),
           pytest.param("cuda_emu", id="cuda_emu")]


@pytest.fixture
def target(request):
    """(backend, device) of a target; loads the emulation for `cuda_emu`."""
    backend = request.param
    if backend == "cuda_emu":
        request.getfixturevalue("cuda_emu")
        return backend, "cpu"
    if not backend_available(backend):
        pytest.skip(f"{backend}: {lkconv.available_backends()[backend]}")
    if backend == "tensorcore" and getattr(request.node, "callspec", None) and \
            request.node.callspec.params.get("dtype") == torch.float32:
        pytest.skip("tensorcore: float32 only as opted-in TF32, held to TF32's error in test_correctness")
    return backend, "cuda"


def _check(x, x64, w, b, g, padding, backend):
    ref = conv_with_grads(x64, w.double(), None if b is None else b.double(), g.double(), padding=padding,
                          fn=unfold_conv)
    if x.is_cuda:
        theirs = conv_with_grads(x, w, b, g, padding=padding)
    else:  # PyTorch's own error at this dtype from its NCHW CPU path (its bf16 channels_last CPU backward takes
        # minutes at some shapes)
        theirs = conv_with_grads(x.contiguous(), w, b, g.contiguous(), padding=padding)
    with lkconv.use_backend(backend):
        ours = conv_with_grads(x, w, b, g, padding=padding, fn=lambda *a: lkconv.depthwise_conv2d(*a))
    for name, o, t, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, theirs, ref):
        if r is not None:
            assert_within_torch_error(o.cpu(), t, r.cpu(), f"{backend} {name}")
    return ours


def _core_cases(emulated: bool):
    return cases(per_kernel=3, max_channels=3) if emulated else cases(per_kernel=3)


@pytest.mark.parametrize("case", cases(per_kernel=3), ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_core_cases(case, dtype, target):
    backend, device = target
    if backend == "cuda_emu" and case.c > 3:
        case = type(case)(**{**case.__dict__, "c": 3})  # same maps and kernels, fewer channels
    x64, x = make_inputs(case, dtype, device)
    w = torch.randn(case.c, 1, case.kh, case.kw, device=device).to(dtype)
    b = torch.randn(case.c, device=device).to(dtype) if case.bias else None
    g = torch.randn(unfold_conv(x64, w.double(), None, padding=case.padding).shape, device=device).to(dtype)
    _check(x, x64, w, b, g, case.padding, backend)


STAGES = [(128, 56, 31), (256, 28, 29), (512, 14, 27), (1024, 7, 13), (96, 56, 51), (768, 7, 51)]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"c{s[0]}_{s[1]}_k{s[2]}")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_stage_shapes(stage, layout, dtype, target):
    backend, device = target
    c, size, k = stage
    n = 2
    if backend == "cuda_emu":
        if dtype != torch.float32 and size > 14:
            pytest.skip("emulated: 16-bit types at the small maps only (the tiles are the same as float32's)")
        n, c = 1, 8 if layout == "channels_last" else 2  # channels_last blocks take 8 channels
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, size, size, device=device).to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(c, 1, k, k, device=device).to(dtype)
    b = torch.randn(c, device=device).to(dtype)
    g = torch.randn(n, c, size, size, device=device).to(dtype)
    ours = _check(x, x.double(), w, b, g, k // 2, backend)
    assert ours[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("device", ["a100", "rtx4090", "tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_core_cases_on_each_emulated_gpu(device, dtype, cuda_emu):
    """The core cases on the other emulated GPUs (their shared-memory limits change the tile choice of large
    filters; calls a GPU cannot run must be refused up front, never fail mid-call)."""
    cuda_emu.select_device(device)
    for case in cases(per_kernel=1, max_channels=3):
        x64, x = make_inputs(case, dtype)
        w = torch.randn(case.c, 1, case.kh, case.kw).to(dtype)
        g = torch.randn(unfold_conv(x64, w.double(), None, padding=case.padding).shape).to(dtype)
        try:
            _check(x, x64, w, None, g, case.padding, "cuda_emu")
        except lkconv.BackendNotSupportedError as exc:
            assert "shared memory" in str(exc) and device == "tiny", exc


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_no_reads_or_writes_outside_the_tensor(target):
    """The input is a window of a NaN-filled buffer (any read outside it poisons the result); outputs written
    into windows of NaN buffers must leave the rest of the buffer untouched."""
    backend, device = target
    buf = torch.full((2, 8, 40, 40), float("nan"), device=device)
    x = buf[:, :, 5:25, 7:30]
    x.copy_(torch.randn_like(x))
    w = torch.randn(8, 1, 13, 13, device=device)
    g_buf = torch.full((2, 8, 40, 40), float("nan"), device=device)
    g = g_buf[:, :, 3:23, 4:27]
    g.copy_(torch.randn_like(g))
    with lkconv.use_backend(backend):
        y = lkconv.depthwise_conv2d(x, w, padding=6)
        gx = torch.ops.lkconv.depthwise_conv2d_bwd_input(g, w, [20, 23], [6, 6, 6, 6], [1, 1], [1, 1])
        gw = torch.ops.lkconv.depthwise_conv2d_bwd_weight(g, x, [13, 13], [6, 6, 6, 6], [1, 1], [1, 1])
    assert torch.isfinite(y).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all()


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_weight_grad_deterministic(target):
    backend, device = target
    n, c = (16, 64) if device == "cuda" else (3, 2)
    x = torch.randn(n, c, 28, 28, device=device)
    g = torch.randn(n, c, 28, 28, device=device)
    with lkconv.use_backend(backend):
        runs = [torch.ops.lkconv.depthwise_conv2d_bwd_weight(g, x, [29, 29], [14] * 4, [1, 1], [1, 1])
                for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_many_images(target):
    backend, device = target
    n, c = (256, 32) if device == "cuda" else (40, 2)  # wgrad tiles span several images at 14x14
    x = torch.randn(n, c, 14, 14, device=device, dtype=torch.bfloat16)
    w = torch.randn(c, 1, 13, 13, device=device, dtype=torch.bfloat16)
    g = torch.randn(n, c, 14, 14, device=device, dtype=torch.bfloat16)
    _check(x, x.double(), w, None, g, 6, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "tensorcore"])
def test_more_than_2_31_elements(backend):
    """A > 2^31-element input is either computed correctly (int64 offsets) or refused with a clear error."""
    if not backend_available(backend):
        pytest.skip(f"{backend}: {lkconv.available_backends()[backend]}")
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
