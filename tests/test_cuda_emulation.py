"""The CUDA execution-model emulation itself (it must catch what it claims to catch), and what it found in the CUDA
kernels: tile fallbacks on every emulated GPU, calls refused up front instead of failing mid-call, the
non-finite rule with cropped taps, and bindings that do not trust their caller."""

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lkconv
from reference import assert_within_torch_error, conv_with_grads, rule_oracle, unfold_conv

CUDA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "cuda")


def _source(name):
    with open(os.path.join(CUDA_DIR, name)) as f:
        return f.read()


def _check_call(x, w, padding, backend="cuda_emu"):
    g = torch.randn(unfold_conv(x.double(), w.double(), None, padding=padding).shape)
    ref = conv_with_grads(x.double(), w.double(), None, g.double(), padding=padding, fn=unfold_conv)
    theirs = conv_with_grads(x, w, None, g, padding=padding)
    with lkconv.use_backend(backend):
        ours = conv_with_grads(x, w, None, g, padding=padding, fn=lambda *a: lkconv.depthwise_conv2d(*a))
    for name, o, t, r in zip(("output", "grad_input", "grad_weight"), ours, theirs, ref):
        assert_within_torch_error(o, t, r, name)


# ---- the emulation catches planted bugs ---------------------------------------------------------------------
# Each bug is planted in one scratch copy of the kernel (one build), switched on at run time by
# lkemu::planted_bug so the three cost one compilation.
PLANTS = [
    ("  __syncthreads();\n", "  if (::lkemu::planted_bug != 1) __syncthreads();\n"),
    ("for (int e = threadIdx.x; e < P * rows * SC; e += nthreads)",
     "for (int e = threadIdx.x; e < P * rows * SC + (::lkemu::planted_bug == 2); e += nthreads)"),
    ("if (x < p.ow) out[", "if (x + (::lkemu::planted_bug == 3) < p.ow) out["),
    ("col >= col_lo && col < col_hi ?", "col >= col_lo && col < col_hi + (::lkemu::planted_bug == 4) ?"),  # 4: global
    # overflow
]
BUGS = {1: "read of never-written shared memory|race", 2: "outside the block's", 3: None}


def _planted_source():
    source = _source("correlate_kernel.cu")
    for old, new in PLANTS:
        assert source.count(old) == 1, f"the planted change no longer applies to the source: {old!r}"
        source = source.replace(old, new)
    return source


@pytest.fixture(scope="module")
def planted_module(cuda_emu_module):
    from lkconv import cuda_emulation

    return cuda_emulation.build({"correlate_kernel.cu": _planted_source()})


@pytest.mark.parametrize("bug", list(BUGS), ids=["missing-barrier", "off-by-one", "unwritten-output"])
def test_planted_bug_is_caught(bug, planted_module, cuda_emu):
    module = planted_module
    module.select_device("h100")
    x, w = torch.randn(1, 2, 9, 9), torch.randn(2, 1, 5, 5)
    module.set_planted_bug(0)
    torch.testing.assert_close(module.cuda_forward(x, w, None, [2, 2, 2, 2], False), F.conv2d(x, w, None, 1, 2, 1, 2))
    module.set_planted_bug(bug)
    try:
        if BUGS[bug] is None:  # no emulator error: the NaN-filled output shows the element nobody wrote
            assert torch.isnan(module.cuda_forward(x, w, None, [2, 2, 2, 2], False)).any()
        else:
            with pytest.raises(RuntimeError, match=BUGS[bug]):
                module.cuda_forward(x, w, None, [2, 2, 2, 2], False)
    finally:
        module.set_planted_bug(0)


ASAN_SCRIPT = r"""
import sys
import torch
import torch.nn.functional as F
from lkconv import cuda_emulation

with open(sys.argv[1]) as f:
    module = cuda_emulation.build({"correlate_kernel.cu": f.read()}, address_sanitizer=True)
module.select_device("h100")
# The kernels as they are, on tensors and views whose ends are the ends of their allocations.
for n, c, h, w, k in ((1, 1, 9, 11, 5), (2, 3, 7, 7, 13), (1, 2, 20, 24, 31), (3, 1, 5, 57, 9)):
    x, wt, g = torch.randn(n, c, h, w), torch.randn(c, 1, k, k), torch.randn(n, c, h, w)
    for layout in ("nchw", "channels_last", "view"):
        xx = {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
              "view": torch.randn(n, c, h, w + 3)[..., 3:]}[layout]
        pad = [k // 2] * 4
        y = module.cuda_forward(xx, wt, None, pad, layout == "channels_last")
        assert torch.allclose(y, F.conv2d(xx, wt, None, 1, k // 2, 1, c), atol=1e-4, rtol=1e-4)
        module.cuda_backward_input(g, wt, h, w, pad, False)
        module.cuda_backward_weight(g, xx, k, k, pad, False)
print("clean", flush=True)
module.set_planted_bug(4)
x = torch.randn(1, 1, 6, 6)
module.cuda_forward(x, torch.randn(1, 1, 5, 5), None, [2, 2, 2, 2], False)
print("not caught", flush=True)
"""


def test_global_memory_under_address_sanitizer(tmp_path):
    """The CUDA kernels under AddressSanitizer (in a process of their own, which preloads the ASan runtime):
    clean on every layout, and a planted one-past-the-row read is reported as a heap-buffer-overflow."""
    from lkconv import cuda_emulation

    try:
        env = cuda_emulation.address_sanitizer_env()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    env.pop("TRITON_INTERPRET", None)
    source = tmp_path / "correlate_kernel.cu"
    source.write_text(_planted_source())
    script = tmp_path / "asan_check.py"
    script.write_text(ASAN_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(source)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert "clean" in run.stdout, run.stderr[-3000:]
    assert "not caught" not in run.stdout and run.returncode != 0
    assert "heap-buffer-overflow" in run.stderr and "correlate_kernel" in run.stderr


def test_launch_bounds_hold_for_every_launch(cuda_emu):
    """Every launch's block size is within its kernel's __launch_bounds__ (read from the sources)."""
    bounds = {}
    for name in ("correlate_kernel.cu", "correlate_dense_kernel.cu", "wgrad_kernel.cu", "wgrad_dense_kernel.cu"):
        text = _source(name)
        consts = {m.group(1): int(m.group(2)) for m in re.finditer(r"constexpr int (\w+) = (\d+);", text)}
        for m in re.finditer(r"__launch_bounds__\(([^)]*)\)\s+(\w+)", text):
            expr = m.group(1).split(",")[0]  # the most threads per block (then, optionally, the fewest blocks)
            for const, value in consts.items():
                expr = expr.replace(const, str(value))
            bounds[m.group(2)] = eval(expr, {})  # noqa: S307  (an arithmetic expression of the source)
    assert set(bounds) == {"correlate_kernel", "correlate_dense_kernel", "wgrad_kernel", "wgrad_dense_kernel"}
    for size, k in ((5, 3), (9, 13), (30, 31), (7, 51), (14, 27)):
        _check_call(torch.randn(2, 3, size, size + 1), torch.randn(3, 1, k, k), k // 2)
    _check_call(torch.randn(8, 3, 7, 7), torch.randn(3, 1, 13, 13), 6)
    launches = cuda_emu.take_launches()
    assert launches
    for launch in launches:
        kernel = launch["kernel"].split("<")[0]
        threads = launch["block"][0] * launch["block"][1] * launch["block"][2]
        assert threads <= bounds.get(kernel, 1024), launch


def test_every_correlate_tile_configuration_runs(cuda_emu):
    """Maps that make the launcher pick each kind of tile (4 or 8 rows per thread, one or several column tiles,
    one or several planes per block, both layouts), each checked against the float64 reference."""
    rows, wide, multi_plane = set(), False, False
    for oh, ow in ((20, 40), (16, 40), (6, 6), (9, 150), (40, 9), (3, 1)):
        for channels_last in (False, True):
            config = cuda_emu.cuda_tile_config("forward", oh, ow, 5, 5, [2, 2, 2, 2], channels_last, 4, 2)
            rows.add(config["rows_per_thread"])
            wide |= config["tile_w"] < ow
            multi_plane |= config["planes"] > 1
            x = torch.randn(2, 5, oh, ow)
            _check_call(x.contiguous(memory_format=torch.channels_last) if channels_last else x,
                        torch.randn(5, 1, 5, 5), 2)
    assert rows == {4, 8} and wide and multi_plane


def test_16bit_sources_stay_16bit_in_shared_memory(cuda_emu):
    """16-bit inputs are held as 16-bit in shared memory: a plane costs less, so a block holds at least as many
    planes in no more bytes per plane; and the 16-bit calls run (checked against float64)."""
    for size, k in ((14, 27), (7, 13), (56, 31)):  # batch 2: the tile kernel (the dense one widens to fp32)
        f32, f16 = (cuda_emu.cuda_tile_config("forward", size, size, k, k, [k // 2] * 4, False, es, 2)
                    for es in (4, 2))
        assert f16["smem"] / f16["planes"] < f32["smem"] / f32["planes"] and f16["planes"] >= f32["planes"]
    for dtype in (torch.float16, torch.bfloat16):
        x, w = torch.randn(2, 3, 9, 11).to(dtype), torch.randn(3, 1, 7, 7).to(dtype)
        with lkconv.use_backend("cuda_emu"):
            y = lkconv.depthwise_conv2d(x, w, padding=3)
        ref = F.conv2d(x.double(), w.double(), None, 1, 3, 1, 3)
        theirs = F.conv2d(x.float(), w.float(), None, 1, 3, 1, 3).to(dtype)
        assert_within_torch_error(y, theirs, ref, f"forward {dtype}")


@pytest.mark.parametrize("schedule", ["reverse", "shuffled"])
@pytest.mark.parametrize("size,k,n", [((14, 15), 9, 2), ((7, 7), 13, 8)], ids=["tile", "dense"])
def test_results_do_not_depend_on_the_thread_schedule(schedule, size, k, n, cuda_emu):
    x, w, g = torch.randn(n, 3, *size), torch.randn(3, 1, k, k), torch.randn(n, 3, *size)

    def run():
        with lkconv.use_backend("cuda_emu"):
            return conv_with_grads(x, w, None, g, padding=k // 2, fn=lambda *a: lkconv.depthwise_conv2d(*a))

    first = run()
    cuda_emu.set_schedule(schedule, 7)
    for a, b in zip(first, run()):
        if a is not None:
            assert torch.equal(a, b)


# ---- the dense kernels (maps the filter spans) -------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (3, 4), (5, 9), (7, 7), (8, 8), (12, 10), (14, 14), (13, 15),
                                 (16, 16), (21, 20), (3, 28), (30, 5)], ids=lambda v: str(v))
def test_dense_forward_and_input_gradient_every_map(h, w, cuda_emu):
    """Every map whose "same" filter spans it takes the dense correlation for the forward (with bias) and the
    input gradient from a batch of 8: every column-block width and count, full and partial blocks, oblong maps,
    a larger filter (cropped), channels_last and channel-slice inputs; a batch of 7 keeps the tile kernel."""
    kh, kw = 2 * h - 1, 2 * w - 1
    pads = [h - 1, h - 1, w - 1, w - 1]
    for pass_ in ("forward", "backward_input"):
        assert cuda_emu.cuda_tile_config(pass_, h, w, kh, kw, pads, False, 4, 8)["kernel"] == "correlate_dense_kernel"
        assert cuda_emu.cuda_tile_config(pass_, h, w, kh, kw, pads, False, 4, 7)["kernel"] == "correlate_kernel"
    x = torch.randn(9, 3, h, w)
    _check_call(x, torch.randn(3, 1, kh, kw), (h - 1, w - 1))
    _check_call(x[:8], torch.randn(3, 1, kh + 2, kw + 4), (h, w + 1))
    _check_call(x.contiguous(memory_format=torch.channels_last), torch.randn(3, 1, kh, kw), (h - 1, w - 1))
    _check_call(torch.randn(8, 6, h, w)[:, 2:5], torch.randn(3, 1, kh, kw), (h - 1, w - 1))


def test_dense_forward_groups_16bit_and_bias(cuda_emu):
    """Several image groups (the last partial) and channel groups (the last partial), 16-bit types, with bias."""
    config = cuda_emu.cuda_tile_config("forward", 7, 7, 13, 13, [6] * 4, False, 4, 70)
    assert config["kernel"] == "correlate_dense_kernel" and config["images"] < 70 and config["channels"] > 1
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        c = config["channels"] + 1
        x, w, b = torch.randn(70, c, 7, 7).to(dtype), torch.randn(c, 1, 13, 13).to(dtype), torch.randn(c).to(dtype)
        with lkconv.use_backend("cuda_emu"):
            y = lkconv.depthwise_conv2d(x, w, b, padding=6)
        ref = F.conv2d(x.double(), w.double(), b.double(), 1, 6, 1, c)
        theirs = F.conv2d(x.float(), w.float(), b.float(), 1, 6, 1, c).to(dtype)
        assert_within_torch_error(y, theirs, ref, f"dense forward {dtype}")


def test_dense_kernels_keep_non_finite_values_local(cuda_emu):
    """An Inf source pixel in the last column and an Inf weight at the filter's corner tap, batch 8: exactly the
    outputs, input gradients and filter taps that meet them through real pixels are non-finite, as in the float64
    oracle of the documented rule (a product with padding does not exist)."""
    x = torch.randn(8, 2, 12, 10)
    x[5, 1, 4, 9] = float("inf")
    w = torch.rand(2, 1, 23, 19) + 0.1
    w[0, 0, 0, 0] = float("inf")  # meets only output (11, 9), through source pixel (0, 0)
    g = torch.rand(8, 2, 12, 10) + 0.1
    with lkconv.use_backend("cuda_emu"):
        ours = conv_with_grads(x, w, None, g, padding=(11, 9), fn=lambda *a: lkconv.depthwise_conv2d(*a))
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    out = rule_oracle(x64, w64, (11, 11, 9, 9))
    ref = (out, *torch.autograd.grad(out, (x64, w64), g.double()))
    for name, o, r in zip(("output", "grad_input", "grad_weight"), ours, ref):
        assert torch.equal(torch.isfinite(o), torch.isfinite(r)), name
    assert not torch.isfinite(ours[0][:, 0, 11, 9]).any() and torch.isfinite(ours[0][:, 0, :11]).all()



DENSE_MAPS = [(1, 1), (2, 3), (3, 4), (5, 9), (7, 7), (8, 8), (6, 12), (12, 10), (14, 14), (13, 15), (16, 16),
              (9, 17), (21, 20), (3, 28), (30, 5)]


def _weight_grad_check(x, g, kh, kw, pad, module):
    pads = [pad[0], pad[0], pad[1], pad[1]]
    ref = conv_with_grads(x.double(), torch.randn(x.shape[1], 1, kh, kw, dtype=torch.float64), None, g.double(),
                          padding=pad, fn=unfold_conv)[2]
    theirs = conv_with_grads(x.contiguous(), torch.randn(x.shape[1], 1, kh, kw).to(x.dtype), None, g.contiguous(),
                             padding=pad)[2]
    ours = module.cuda_backward_weight(g, x, kh, kw, pads, False)
    assert_within_torch_error(ours, theirs, ref, f"dense weight gradient {tuple(x.shape)} k{kh}x{kw}")


@pytest.mark.parametrize("h,w", DENSE_MAPS, ids=lambda v: str(v))
def test_dense_weight_grad_every_map(h, w, cuda_emu):
    """Every map whose "same" filter spans it (2H - 1 x 2W - 1 taps or more) takes the dense weight-gradient
    kernel: every block width (4 and 7 columns), one, two and four blocks per row, full and partial last blocks,
    square and oblong maps; checked against float64, with a larger filter (its outer taps get zeros) and with
    channels_last and channel-slice inputs."""
    kh, kw = 2 * h - 1, 2 * w - 1
    config = cuda_emu.cuda_tile_config("backward_weight", h, w, kh, kw, [h - 1, h - 1, w - 1, w - 1], False, 4, 3)
    assert config["kernel"] == "wgrad_dense_kernel", config
    x, g = torch.randn(3, 2, h, w), torch.randn(3, 2, h, w)
    _weight_grad_check(x, g, kh, kw, (h - 1, w - 1), cuda_emu)
    _weight_grad_check(x, g, kh + 2, kw + 4, (h, w + 1), cuda_emu)
    _weight_grad_check(x.contiguous(memory_format=torch.channels_last), g, kh, kw, (h - 1, w - 1), cuda_emu)
    _weight_grad_check(torch.randn(3, 5, h, w)[:, 1:3], torch.randn(3, 4, h, w)[:, 2:], kh, kw, (h - 1, w - 1),
                       cuda_emu)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_dense_weight_grad_16bit(dtype, cuda_emu):
    for h, w in ((7, 7), (14, 14), (5, 9)):
        x, g = torch.randn(4, 2, h, w).to(dtype), torch.randn(4, 2, h, w).to(dtype)
        _weight_grad_check(x, g, 2 * h - 1, 2 * w - 1, (h - 1, w - 1), cuda_emu)


@pytest.mark.parametrize("h,w", [(7, 7), (14, 14), (12, 10)])
def test_dense_weight_grad_image_groups(h, w, cuda_emu):
    """A batch of several image groups with a partial last one (slices without images in it), and one smaller
    than a group; the group size follows the batch."""
    k = (2 * h - 1, 2 * w - 1)
    pads = [h - 1, h - 1, w - 1, w - 1]
    full = cuda_emu.cuda_tile_config("backward_weight", h, w, *k, pads, False, 4, 1 << 20)["images"]
    n = full + 3
    assert cuda_emu.cuda_tile_config("backward_weight", h, w, *k, pads, False, 4, n)["images"] == full
    assert cuda_emu.cuda_tile_config("backward_weight", h, w, *k, pads, False, 4, 2)["images"] == 2
    x, g = torch.randn(n, 1, h, w), torch.randn(n, 1, h, w)
    _weight_grad_check(x, g, *k, (h - 1, w - 1), cuda_emu)


def test_dense_weight_grad_applies_only_where_every_pair_meets_a_tap(cuda_emu):
    """The dense kernel multiplies every (gradient pixel, input pixel) pair, so it runs only where each pair meets
    a tap; a filter one tap short, a map taller than its limit, or a strided-output ("valid") call keep the tile
    kernel, which is checked to run too."""
    def kernel(h, w, kh, kw, pads):
        return cuda_emu.cuda_tile_config("backward_weight", h, w, kh, kw, pads, False, 4, 4)["kernel"]

    assert kernel(14, 14, 27, 27, [13] * 4) == "wgrad_dense_kernel"
    assert kernel(14, 14, 25, 25, [12] * 4) == "wgrad_kernel"
    assert kernel(14, 14, 27, 25, [13, 13, 12, 12]) == "wgrad_kernel"
    assert kernel(33, 5, 65, 9, [32, 32, 4, 4]) == "wgrad_kernel"
    assert kernel(14, 14, 27, 27, [0] * 4) == ""  # a 27x27 "valid" filter on a 14x14 map: no output at all
    assert kernel(10, 10, 19, 19, [10] * 4) == "wgrad_kernel"  # a 12x12 output of a 10x10 map: not "same"
    x, g = torch.randn(2, 2, 14, 14), torch.randn(2, 2, 14, 14)
    _weight_grad_check(x, g, 25, 25, (12, 12), cuda_emu)


def test_configuration_follows_the_batch(cuda_emu):
    """Whether the dense kernels run depends on the batch, so the configuration the backend checks before a call
    is the one for the call's own batch: the kernels each pass launches are the ones it names (batch 7: the tile
    kernels; 8: the dense ones), and both are right."""
    size, k = 7, 13
    pads = [k // 2] * 4
    for n in (7, 8):
        names = {p: cuda_emu.cuda_tile_config(p, size, size, k, k, pads, False, 4, n)["kernel"]
                 for p in ("forward", "backward_input", "backward_weight")}
        assert (names["forward"] == "correlate_dense_kernel") == (n >= 8)
        cuda_emu.take_launches()
        _check_call(torch.randn(n, 2, size, size), torch.randn(2, 1, k, k), k // 2)
        launched = {launch["kernel"].split("<")[0] for launch in cuda_emu.take_launches()}
        assert launched - {"wgrad_finalize_kernel"} == set(names.values()), (n, launched, names)


# ---- fallbacks and up-front refusals on every emulated GPU -----------------------------------------------------
@pytest.mark.parametrize("device", ["h100", "a100", "rtx4090", "tiny"])
def test_large_filters_run_or_are_refused_up_front(device, cuda_emu):
    """Each pass of each call either runs correctly or is refused before it starts (so the dispatcher can pick
    another backend); a forward that runs is never followed by a failing backward."""
    cuda_emu.select_device(device)
    for size, k in ((64, 113), (24, 101), (20, 61), (16, 31)):
        x, w = torch.randn(1, 2, size, size), torch.randn(2, 1, k, k)
        refusals = {p: cuda_emu.cuda_tile_config(p, size, size, k, k, [k // 2] * 4, False, 4, 1)["refusal"]
                    for p in ("forward", "backward_input", "backward_weight")}
        if not any(refusals.values()):
            _check_call(x, w, k // 2)
            continue
        with lkconv.use_backend("cuda_emu"), pytest.raises(lkconv.BackendNotSupportedError, match="shared memory"):
            lkconv.depthwise_conv2d(x.requires_grad_(), w.requires_grad_(), padding=k // 2).sum().backward()
        assert "shared memory" in lkconv.explain(x, w, padding=k // 2)
    if device == "a100":  # the reported failure: a 113x113 weight gradient on a 64x64 map now runs
        assert not cuda_emu.cuda_tile_config("backward_weight", 64, 64, 113, 113, [56] * 4, False)["refusal"]
    if device == "tiny":
        config = cuda_emu.cuda_tile_config("forward", 64, 64, 75, 75, [37] * 4, False)
        assert not config["refusal"] and config["tile_w"] < 64  # the forward narrows its tile to fit
        x, w = torch.randn(1, 1, 64, 64), torch.randn(1, 1, 75, 75)
        with lkconv.use_backend("cuda_emu"):
            y = lkconv.depthwise_conv2d(x, w, padding=37)
        ref = unfold_conv(x.double(), w.double(), None, padding=37)
        assert_within_torch_error(y, F.conv2d(x, w, None, 1, 37, 1, 1), ref, "narrowed forward")


# ---- findings: the non-finite rule, the bindings -------------------------------------------------------------
def test_nan_grad_reaches_only_real_taps(cuda_emu):
    """N=1, C=1, 2x2 map, 7x7 kernel, padding 3, NaN at grad_out[0,0,0,0]: taps that only read padding get 0,
    taps that meet the NaN through a real pixel get NaN (the documented rule), on the CUDA kernels."""
    x = torch.randn(1, 1, 2, 2)
    w = torch.randn(1, 1, 7, 7, requires_grad=True)
    g = torch.randn(1, 1, 2, 2)
    g[0, 0, 0, 0] = float("nan")
    with lkconv.use_backend("cuda_emu"):
        (gw,) = torch.autograd.grad(lkconv.depthwise_conv2d(x, w, padding=3), w, g)
    assert (gw[0, 0, :2] == 0).all() and (gw[0, 0, 5:] == 0).all() and (gw[0, 0, :, :2] == 0).all()
    assert torch.isnan(gw[0, 0, 3:5, 3:5]).all()


def test_inf_weight_on_padding_only_taps(cuda_emu):
    """An Inf weight at a tap that only reads padding leaves every output finite; one at a tap that reads real
    pixels makes exactly those outputs non-finite (the rule of lkconv/nonfinite.py, as on the CPU)."""
    x = torch.randn(1, 2, 4, 4)
    w = torch.randn(2, 1, 11, 11)
    w[0, 0, 0, 0] = float("inf")  # reads padding only (k=11 on 4x4 with padding 5)
    w[1, 0, 5, 5] = float("inf")  # the centre: reads every pixel
    with lkconv.use_backend("cuda_emu"):
        y = lkconv.depthwise_conv2d(x, w, padding=5)
    with lkconv.use_backend("cpu"):
        expected = lkconv.depthwise_conv2d(x, w, padding=5)
    assert torch.isfinite(y[0, 0]).all() and not torch.isfinite(y[0, 1]).any()
    assert torch.equal(torch.isfinite(y), torch.isfinite(expected))


@pytest.mark.parametrize("size,k,pixel", [((13, 11), 7, (6, 10)), ((9, 6), 13, (0, 5)), ((20, 23), 5, (19, 22)),
                                          ((12, 10), 23, (5, 9)), ((7, 7), 13, (6, 6))])
def test_inf_input_stays_local_in_every_pass(size, k, pixel, cuda_emu):
    """An Inf input pixel (at the map's last columns, where the kernels' partial column steps and chunks are)
    makes exactly the outputs and filter taps non-finite that meet it through real pixels, as the float64
    reference does: no tile's padding, halo or partial step multiplies it by a zero (nor, in the dense weight
    gradient of the last two maps, a zero-padded column of a partial block)."""
    x = torch.randn(2, 3, *size)
    x[1, 2, pixel[0], pixel[1]] = float("inf")
    w = torch.rand(3, 1, k, k) + 0.1
    g = torch.rand(2, 3, *size) + 0.1
    pad = k // 2
    with lkconv.use_backend("cuda_emu"):
        ours = conv_with_grads(x, w, None, g, padding=pad, fn=lambda *a: lkconv.depthwise_conv2d(*a))
    ref = conv_with_grads(x.double(), w.double(), None, g.double(), padding=pad)
    for name, o, r in zip(("output", "grad_input", "grad_weight"), ours, ref):
        assert torch.equal(torch.isfinite(o), torch.isfinite(r)), name
    assert not torch.isfinite(ours[0]).all() and not torch.isfinite(ours[2]).all()


def test_bindings_handle_empty_tensors(cuda_emu):
    m = cuda_emu
    gw = m.cuda_backward_weight(torch.randn(2, 0, 5, 5), torch.randn(2, 0, 5, 5), 3, 3, [1, 1, 1, 1], False)
    assert gw.shape == (0, 1, 3, 3)
    gw = m.cuda_backward_weight(torch.randn(0, 3, 5, 5), torch.randn(0, 3, 5, 5), 3, 3, [1, 1, 1, 1], False)
    assert gw.shape == (3, 1, 3, 3) and (gw == 0).all()
    assert m.cuda_forward(torch.randn(0, 3, 5, 5), torch.randn(3, 1, 3, 3), None, [1, 1, 1, 1], False).shape[0] == 0
    with pytest.raises(RuntimeError, match="grad_output shape"):
        m.cuda_backward_weight(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 5, 5), 3, 3, [1, 1, 1, 1], False)
    with pytest.raises(RuntimeError, match="CPU \\(CUDA emulation\\) tensor|dtype"):
        m.cuda_forward(torch.randn(1, 3, 5, 5, dtype=torch.float64), torch.randn(3, 1, 3, 3, dtype=torch.float64),
                       None, [1, 1, 1, 1], False)


def test_forced_emulation_matches_conv2d_through_the_public_api(cuda_emu):
    x = torch.randn(2, 4, 11, 10).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 1, 7, 3)
    with lkconv.use_backend("cuda_emu"):
        y = lkconv.depthwise_conv2d(x, w, padding="same")
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, "same", 1, 4), rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)
