"""`python -m bench.sass` on kernels whose instruction mix is known: the SASS parser, the hot-loop finder, the
occupancy calculation, and a real nvcc/Triton compilation for sm_90 (skipped where nvcc is missing)."""

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

    cfg = cuda_emu.cuda_tile_config("forward", size, size, k, k, [pad] * 4, False)
    out = size + 2 * pad - k + 1
    khc, kwc = cfg["useful_taps"]
    crop = max(0, pad - out + 1)
    steady, edge = sass.correlate_work(cfg, size, size, out, out, khc, kwc, pad - crop, pad - crop)
    call = ConvCall(1, cfg["planes"], size, size, k, k, (pad,) * 4, (1, 1), (1, 1), torch.device("cpu"),
                    torch.float32, False)
    useful = cfg["planes"] * call.useful_taps()
    assert steady + edge >= useful
    if (size, k) == (14, 27):
        assert steady + edge < 0.6 * cfg["planes"] * out * out * k * k  # the zero-padded plane: 1.0


@pytest.mark.parametrize("size,k,pad", [(14, 27, 13), (7, 13, 6), (9, 5, 2), (30, 31, 15)])
def test_weight_gradient_work_model_counts_every_useful_tap(size, k, pad, cuda_emu):
    """The prediction's walk of the CUDA weight gradient issues at least every useful multiply-add (so its
    utilization cannot exceed 1) and skips the padding-only rows and column steps."""
    from lkconv.geometry import ConvCall

    import torch

    n = 8  # a full tile of 14x14 maps
    cfg = cuda_emu.cuda_tile_config("backward_weight", size, size, k, k, [pad] * 4, False)
    khc, kwc = cfg["useful_taps"]
    crop = max(0, pad - size + 1)
    slots = sass.wgrad_work(cfg, n, size, size, size, size, khc, kwc, pad - crop, pad - crop)
    call = ConvCall(n, 1, size, size, k, k, (pad,) * 4, (1, 1), (1, 1), torch.device("cpu"), torch.float32, False)
    assert slots >= n * call.useful_taps()
    if (size, k) == (14, 27):
        assert slots < 0.75 * n * size * size * k * k  # every position x every tap: 1.0
