"""`python -m bench.sass` on kernels whose instruction mix is known: the SASS parser, the hot-loop finder, the
occupancy calculation, and a real nvcc/Triton compilation for sm_90 (skipped where nvcc is missing)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from bench import sass

SASS = """
	code for sm_90
		Function : tiny
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   ISETP.GE.AND P0, PT, R0, 0x1, PT ;
        /*0030*/                   FFMA R2, R3, R4, R2 ;
        /*0040*/                   LDS R3, [R0+0x4] ;
        /*0050*/                   FFMA R5, R3, R4, R5 ;
        /*0060*/                   FFMA R6, R3, R4, R6 ;
        /*0070*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0080*/              @!P0 BRA 0x40 ;
        /*0090*/                   FADD R7, R5, R6 ;
        /*00a0*/                   LDG.E R8, desc[UR4][R10.64] ;
        /*00b0*/                   FFMA R9, R8, R8, R9 ;
        /*00c0*/              @P0 BRA 0xa0 ;
        /*00d0*/                   EXIT ;
"""


def test_parser_and_hot_loop_on_known_sass():
    funcs = sass.parse_sass(SASS)
    assert list(funcs) == ["tiny"] and len(funcs["tiny"]) == 14
    found = sass.loops(funcs["tiny"])
    assert [(lp.start, lp.end) for lp in found] == [(0x40, 0x80), (0xA0, 0xC0)]
    hot = sass.hot_loop(funcs["tiny"])
    assert (hot.start, hot.end) == (0x40, 0x80)  # two FFMAs beat one
    assert hot.mix == {"LDS": 1, "FFMA": 2, "int/address": 1, "branch": 1}
    assert sass.category("IMAD.MOV.U32") == "move" and sass.category("IMAD.WIDE") == "int/address"
    assert sass.category("HGMMA.64x128x16.F32.BF16") == "MMA" and sass.category("HFMA2.MMA") == "HFMA2"


def test_resource_usage_parser():
    text = " Function _Z4tinyPKfPfi:\n  REG:40 STACK:16 SHARED:1024 LOCAL:8 CONSTANT[0]:544 TEXTURE:0\n"
    assert sass.parse_resources(text) == {"_Z4tinyPKfPfi": {"REG": 40, "STACK": 16, "SHARED": 1024, "LOCAL": 8,
                                                             "TEXTURE": 0}}


def test_occupancy():
    assert sass.occupancy("sm_90", 64, 0, 256)["fraction"] == 0.5  # 64 registers: 4 blocks of 8 warps
    assert sass.occupancy("sm_90", 32, 0, 256)["fraction"] == 1.0
    limited = sass.occupancy("sm_90", 32, 100 * 1024, 256)
    assert limited["blocks"] == 2 and limited["limiter"] == "shared memory"


TINY_CU = r"""
__global__ void tiny(const float* __restrict__ a, float* out, int n) {
  float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
  const float x = a[threadIdx.x];
#pragma unroll 1
  for (int i = 0; i < n; ++i) {
    acc0 = fmaf(acc0, x, 1.f);
    acc1 = fmaf(acc1, x, 2.f);
    acc2 = fmaf(acc2, x, 3.f);
    acc3 = fmaf(acc3, x, 4.f);
  }
  out[threadIdx.x] = acc0 + acc1 + acc2 + acc3;
}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_real_sm90_compile_of_a_known_loop(tmp_path):
    src = tmp_path / "tiny.cu"
    src.write_text(TINY_CU)
    cubin = str(tmp_path / "tiny.cubin")
    subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-O3", "-o", cubin, str(src)], check=True, capture_output=True)
    funcs, res = sass.inspect_cubin(cubin)
    (name,) = funcs
    hot = sass.hot_loop(funcs[name])
    assert hot.mix["FFMA"] == 4  # the four dependent chains, once per iteration
    assert hot.mix.get("branch", 0) >= 1 and hot.size <= 10
    assert res[name]["REG"] > 0 and res[name].get("LOCAL", 0) == 0


TRITON_SCRIPT = r"""
import os, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from bench import sass


@triton.jit
def scale_sum(x, y, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), tl.float32)
    for j in range(n):
        acc = tl.fma(tl.load(x + j * BLOCK + i), 2.0, acc)
    tl.store(y + i, acc)


src = triton.compiler.ASTSource(fn=scale_sum, signature={"x": "*fp32", "y": "*fp32", "n": "i32",
                                                         "BLOCK": "constexpr"}, constexprs={"BLOCK": 128})
compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
with open(sys.argv[1], "wb") as f:
    f.write(compiled.asm["cubin"])
funcs, res = sass.inspect_cubin(sys.argv[1])
(name,) = funcs
hot = sass.hot_loop(funcs[name])
print(hot.mix["FFMA"], hot.mix.get("LDG", 0))
"""


def test_triton_kernel_compiles_for_sm90_without_a_gpu(tmp_path):
    """In a process of its own: the tests run Triton under its interpreter, which cannot compile."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "compile_tiny.py"  # Triton reads the kernel's source from its file
    script.write_text(TRITON_SCRIPT)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "k.cubin")], env=env, cwd=root,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    ffma, ldg = (int(v) for v in run.stdout.split())
    assert ffma >= 1 and ffma == ldg  # each loaded element feeds exactly one FMA, as the source says


@pytest.mark.parametrize("size,k,pad", [(14, 27, 13), (7, 13, 6), (9, 5, 2), (20, 7, 0), (56, 31, 15)])
def test_correlation_work_model_counts_every_useful_tap(size, k, pad, cuda_emu):
    """The prediction's walk of the CUDA correlation (rows inside the map, chunks touching it, warps as long as
    their busiest lane) issues at least every useful multiply-add, so its utilization can never exceed 1; and it
    skips padding: at a large kernel on a small map far less is issued than the zero-padded plane would need."""
    from lkconv.geometry import ConvCall

    import torch

    cfg = cuda_emu.cuda_tile_config("forward", size, size, k, k, [pad] * 4, False, 4, 2)  # batch 2: the tile kernel
    assert cfg["kernel"] == "correlate_kernel"
    out = size + 2 * pad - k + 1
    khc, kwc = cfg["useful_taps"]
    crop = max(0, pad - out + 1)
    steady, edges = sass.correlate_work(cfg, size, size, out, out, khc, kwc, pad - crop, pad - crop)
    edge = sum(edges.values())
    assert all(1 <= k < cfg["rows_per_thread"] for k in edges)
    call = ConvCall(1, cfg["planes"], size, size, k, k, (pad,) * 4, (1, 1), (1, 1), torch.device("cpu"),
                    torch.float32, False)
    useful = cfg["planes"] * call.useful_taps()
    assert steady + edge >= useful
    if (size, k) == (14, 27):
        assert steady + edge < 0.6 * cfg["planes"] * out * out * k * k  # the zero-padded plane: 1.0


@pytest.mark.parametrize("size,k,pad", [(14, 25, 12), (20, 37, 18), (9, 5, 2), (30, 31, 15)])
def test_weight_gradient_work_model_counts_every_useful_tap(size, k, pad, cuda_emu):
    """The prediction's walk of the CUDA weight gradient issues at least every useful multiply-add (so its
    utilization cannot exceed 1) and skips the padding-only rows and column steps."""
    from lkconv.geometry import ConvCall

    import torch

    n = 8  # a full tile of 14x14 maps
    cfg = cuda_emu.cuda_tile_config("backward_weight", size, size, k, k, [pad] * 4, False)
    assert cfg["kernel"] == "wgrad_kernel"
    khc, kwc = cfg["useful_taps"]
    crop = max(0, pad - size + 1)
    slots = sass.wgrad_work(cfg, n, size, size, size, size, khc, kwc, pad - crop, pad - crop)
    call = ConvCall(n, 1, size, size, k, k, (pad,) * 4, (1, 1), (1, 1), torch.device("cpu"), torch.float32, False)
    assert slots >= n * call.useful_taps()
    if (size, k) == (20, 37):
        assert slots < 0.75 * n * size * size * k * k  # every position x every tap: 1.0


@pytest.mark.parametrize("h,w,n", [(14, 14, 64), (7, 7, 64), (7, 7, 5), (12, 10, 37), (16, 15, 3)])
def test_dense_weight_gradient_work_model(h, w, n, cuda_emu):
    """The dense weight gradient's walk issues every useful multiply-add (all H^2 W^2 pairs per image) and no
    more where its column blocks fit the map and every slice of every group has as many images; one flush per
    lane and row offset (2H - 1 per group)."""
    cfg = cuda_emu.cuda_tile_config("backward_weight", h, w, 2 * h - 1, 2 * w - 1, [h - 1, h - 1, w - 1, w - 1],
                                    False, 4, n)
    assert cfg["kernel"] == "wgrad_dense_kernel"
    slots, flushes, loaded = sass.dense_wgrad_work(cfg, n, h, w)
    useful = n * h * h * w * w
    groups = -(-n // cfg["images"])
    assert slots >= useful and flushes == 32 * (2 * h - 1) * groups
    assert 2 * n * h * w <= loaded <= 2 * n * h * w * 2  # both tensors, rows padded to blocks of 4 or 8
    slices = 32 // cfg["blocks_per_row"] ** 2
    if w % cfg["block_cols"] == 0 and n % cfg["images"] == 0 and cfg["images"] % slices == 0:
        assert slots == useful
    assert slots <= useful * (cfg["blocks_per_row"] * cfg["block_cols"] / w) ** 2 * slices


@pytest.mark.parametrize("h,w,n,c", [(14, 14, 64, 512), (7, 7, 64, 1024), (12, 10, 9, 5), (16, 15, 70, 3)])
def test_dense_correlation_work_model(h, w, n, c, cuda_emu):
    """The dense forward's walk issues every useful multiply-add (all H^2 W^2 pairs per image and channel), and
    no more where its blocks, image groups and channel groups are full; the loaders hold every source element."""
    cfg = cuda_emu.cuda_tile_config("forward", h, w, 2 * h - 1, 2 * w - 1, [h - 1, h - 1, w - 1, w - 1], False, 4, n)
    assert cfg["kernel"] == "correlate_dense_kernel"
    slots, loaded = sass.dense_correlate_work(cfg, n, c, h, w)
    useful = n * c * h * h * w * w
    assert slots >= useful and loaded >= n * c * h * w
    full = (w % cfg["block_cols"] == 0 and n % cfg["images"] == 0 and c % cfg["channels"] == 0
            and cfg["channels"] * h * (w // cfg["block_cols"]) * cfg["images"] // 8 % 32 == 0)
    if full:
        assert slots == useful


def test_loader_per_element_reads_the_load_store_loop():
    instrs = [sass.Instr(16 * i, op, "") for i, op in enumerate(["LDG.E", "IADD3", "STS", "LDG.E", "STS", "BRA"])]
    instrs[-1] = sass.Instr(80, "BRA", "0x0")
    assert sass.loader_per_element(instrs) == 3.0  # 6 instructions, 2 elements stored
    with_math = instrs[:2] + [sass.Instr(32, "FFMA", "")] + instrs[2:]
    assert sass.loader_per_element([sass.Instr(16 * i, x.opcode, x.operands) for i, x in enumerate(with_math)]) == 0


def test_shuffle_to_store_counts_the_reduce_and_its_stores():
    instrs = [sass.Instr(16 * i, op, "") for i, op in enumerate(
        ["FFMA", "SHFL.BFLY", "FADD", "FSEL", "SHFL.BFLY", "FADD", "LEA", "STS", "STS", "BRA", "ISETP", "BSSY",
         "LEA", "STS"])]
    assert sass.shuffle_to_store(instrs) == 8  # SHFL .. the second STS; a store 5 instructions on is another site
    assert sass.shuffle_to_store(instrs[:1]) == 0


MMA_SASS = """
		Function : mixed
        /*0000*/                   FFMA R2, R3, R4, R2 ;
        /*0010*/                   FFMA R5, R3, R4, R5 ;
        /*0020*/                   FFMA R6, R3, R4, R6 ;
        /*0030*/              @!P0 BRA 0x0 ;
        /*0040*/                   LDGSTS.E.BYPASS.128 [R21], desc[UR12][R2.64] ;
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0060*/              @P0 BRA 0x40 ;
        /*0070*/                   EXIT ;
"""


def test_hot_loop_prefers_the_mma_loop():
    """One HGMMA outweighs any number of FFMAs: in the tensor-core kernels the FFMA loop is the rare non-finite
    fallback."""
    (instrs,) = sass.parse_sass(MMA_SASS).values()
    hot = sass.hot_loop(instrs)
    assert (hot.start, hot.end) == (0x40, 0x60) and hot.mix == {"LDG": 1, "MMA": 1, "branch": 1}


@pytest.mark.parametrize("size,k,n", [(14, 27, 3), (7, 13, 5), (9, 5, 2), (56, 31, 1), (20, 7, 2)])
@pytest.mark.parametrize("bm,bn,shift", [(64, 32, 0), (16, 16, 3), (128, 64, 7)])
def test_toeplitz_model_counts_every_useful_tap(size, k, n, bm, bn, shift):
    """The tensor-core correlation's walk (tiles over image rows, skipped filter rows and column steps) performs
    at least every useful multiply-add, and skips work: at 14x14 k27 far less than the full padded sweep."""
    from lkconv.geometry import ConvCall
    from lkconv.triton_kernels import _useful_taps

    import torch

    pad = k // 2
    i0, i1 = _useful_taps(k, size, size, pad)
    steps = sass.toeplitz_steps(bm, bn, n, size, size, size, size, i1 - i0 + 1, i1 - i0 + 1, pad - i0, pad - i0,
                                shift)
    call = ConvCall(n, 1, size, size, k, k, (pad,) * 4, (1, 1), (1, 1), torch.device("cpu"), torch.float32, False)
    assert steps * bm * 16 * bn >= call.useful_taps()
    full = sass._ceil_div(n * size, bm) * k * sass._ceil_div(size, bn) * sass._ceil_div(bn + k - 1 + shift, 16)
    assert steps <= full
    if (size, k, bm, bn) == (14, 27, 64, 32):
        assert steps < 0.7 * full


@pytest.mark.parametrize("size,k,n", [(14, 27, 3), (7, 13, 5), (9, 5, 2), (30, 31, 1)])
@pytest.mark.parametrize("bi,bj,bx,align", [(32, 32, 16, 8), (16, 32, 32, 1), (64, 64, 16, 2)])
def test_hankel_model_counts_every_useful_tap(size, k, n, bi, bj, bx, align):
    from lkconv.geometry import ConvCall
    from lkconv.triton_kernels import _useful_taps

    import torch

    pad = k // 2
    i0, i1 = _useful_taps(k, size, size, pad)
    kc = i1 - i0 + 1
    steps = sass.hankel_steps(bi, bj, bx, n, size, size, size, size, kc, kc, pad - i0, pad - i0, align)
    call = ConvCall(n, 1, size, size, k, k, (pad,) * 4, (1, 1), (1, 1), torch.device("cpu"), torch.float32, False)
    assert steps * bi * bj * bx >= call.useful_taps()


FORWARD_SCRIPT = r"""
import json
import sys

from bench import sass
from lkconv import tensorcore_kernels as tc

ieee, block, align, dtype = json.loads(sys.argv[1])


def flags(_, config):
    return dict(HAS_BIAS=False, TF32=False, IEEE_FP32=ieee)


kernels = [("toeplitz_correlate", tc._toeplitz_correlate_kernel, [(("BLOCK_M", "BLOCK_N", "ALIGN"), (*block, align))],
            flags, ("s_sw", "o_sw"))]
report = sass._compile_triton(kernels, 90, dtypes=(dtype,))[0]  # 4 warps (then 8)
print(json.dumps(dict(report.hot_loop, note=report.note, size=sum(report.hot_loop.values()),
                      spills=report.spill_bytes)))
"""


def _compile_forward(tmp_path, ieee: bool, block, align: int, dtype: str) -> dict:
    """The Toeplitz forward compiled for sm_90 in a fresh interpreter (the test session runs Triton interpreted):
    its hot loop's instruction mix, MMA kind, size and spilled bytes."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "compile_forward.py"
    script.write_text(FORWARD_SCRIPT)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, str(script), json.dumps([ieee, list(block), align, dtype])], env=env,
                         cwd=root, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_tensorcore_kernel_hot_loop_on_sm90(tmp_path):
    """The forward's sm_90 hot loop: a warpgroup MMA fed by vector copies (cp.async) of aligned input rows and
    band-table rows, no per-element loads or shared-memory stores (what the alignment hints and the band table
    are for)."""
    mix = _compile_forward(tmp_path, False, (64, 32), 8, "bf16")
    assert mix["note"] == "HGMMA" and mix.get("MMA", 0) >= 1
    assert mix.get("LDG", 0) <= 4 and mix.get("STS", 0) == 0  # 2 x LDGSTS.128 per thread per step
    assert mix["size"] < 80


def test_cuda_core_gemm_hot_loop_on_sm90(tmp_path):
    """The `triton` backend's forward (the Toeplitz GEMM with IEEE fp32 products) compiles to an FMA loop on the
    CUDA cores: no MMA, most of the loop FFMA (each staged operand reused from registers across a thread's
    outputs), operands still vector copies, no spills."""
    mix = _compile_forward(tmp_path, True, (128, 16), 4, "fp32")
    assert mix.get("MMA", 0) == 0 and mix["spills"] == 0
    assert mix["FFMA"] == 128 * 16 * 16 // 128  # the step's multiply-adds per thread, nothing else multiplies
    assert mix["FFMA"] >= 0.6 * mix["size"] and mix.get("LDG", 0) <= 8
