"""Depthwise convolution on tensor cores (Triton `tl.dot`): forward, backward-input and weight gradient as small
GEMMs, for float16/bfloat16 (float32 through TF32 when the user opts in). fp32 accumulation throughout.

Design (the arithmetic that sizes the tiles; figures per SM of an H100, sm_90; `python -m bench.sass` reports
them for every config: issue, MMA and shared-memory time per step, and which binds)
--------------------------------------------------------------------------------------------------------------
Forward / backward-input (Toeplitz along the width). For channel c, filter row i, a block of BM output rows and
output columns [x0, x0+BN):

    out[rows, x0:x0+BN] += in_pad[rows + i, x0 : x0+K] @ T_i,   T_i[a, b] = w[c, i, a - b]  (0 <= a - b < kw)

with K = BN + kw - 1 rounded up to the MMA's k (16), walked in steps of 16 columns. Backward-input is the same
with the filter turned by 180 degrees; a filter taller than wide (51x5) runs transposed, so the band lies along
its long side. Per step: 2*BM*16*BN MMA FLOPs; BM*16 A and 16*BN T elements copied to shared memory and read
back by the MMA.
  - Useful fraction kw / K: at kw=31, BN=16 -> 65%, BN=32 -> 48%, BN=64 -> 32%.
  - Shared memory binds first. The operands cross it twice (cp.async in, wgmma out) at 128 B/clk: a 16-bit step
    of BM=128, BN=32 moves 2 * (2048 + 512) * 2 B = 10 KB in 80 clk for 131k FLOPs (1640 FLOP/clk, against the
    tensor cores' ~3800), x 48% useful. Larger BN feeds the MMA better but wastes more of the band; BM=128 with
    BN=32 is the best balance at 56x56 k31 (predicted ~206 useful bf16 TFLOP/s, 3.1x the FP32 CUDA-core peak;
    shared memory bound). Reusing one staged input slab for all filter rows (the A of row i+1 is the A of row i
    moved down one row) would remove most of the copies, but needs MMA operands at arbitrary row offsets in
    shared memory (ldmatrix + mma.sync in CUDA), which tl.dot cannot express.
  - Every operand load is a 16-byte vector (cp.async): the input window starts on a 16-column boundary of the map
    (SHIFT columns early, the band shifted to match; also what aligns the steps with the map, so none is split
    between padding and pixels needlessly) and the rows are aligned (ALIGN), and T comes from a band table
    built once per call (`_band_table`: 16 shifted copies of each filter row, ~16 x (Q + 64) / kw times the
    taps) in which every T_i of every step is a block of aligned rows. Per-element loads of T with a band mask
    cost ~25 instructions per step; the table costs one gather per call.
  - The rows of a tile are counted over (row, image), image fastest: the images share the channel's T, so a 7x7
    map does not leave 57 of 64 rows idle, and a tile spans as few output rows as the batch allows. Filter rows
    whose source rows are padding for the whole tile and 16-column steps that read padding only are skipped per
    program, so the row skip is nearly exact: 128 rows of a batch of 64 on a 14x14 map span 2 output rows, which
    meet 15 of 27 filter rows (image-major, a tile spans every output row and meets all 27).
Weight gradient (Hankel). dW[c, i, j] = sum over (n, sy, ox) of g[n, c, sy + pt - i, ox] * x[n, c, sy, ox + j - pl]:
M = tap rows (BI), N = tap columns (BJ), K = (real input row, output column) in steps of BX output columns. A =
output-gradient rows in reverse order (vector loads from an aligned column), B = a sliding-window (Hankel) view
of one input row: each tap column is one element further along, so B cannot be a vector load; the input is
padded along the width once per call (1 + (kw - 1) / W times its size) so that B needs no per-element bounds
test. B's per-element loads make the weight gradient issue-bound (~100 instructions per warp and 32x32x32 step: ~103
predicted useful bf16 TFLOP/s at 56x56 k31). K splits into fixed ranges whose partial sums are added in a fixed
order afterwards (deterministic, no atomics).

Non-finite values. A Toeplitz/Hankel product multiplies real pixels by the structural zeros of the band (and
masked-out positions by real pixels), so an Inf or NaN *input* would leak into outputs that never read it
(0 * Inf = NaN). The op layer already zeroes non-finite weights and output gradients (nonfinite.py); for the
rest, each program checks its fp32 result once, after the loop, and only when it is not all finite recomputes
its tile directly, tap by tap, with exactly the products the convolution has. Finite data never pays for it.

On the CUDA cores (`cuda_cores=True`, the `triton` backend): the same GEMMs with operands widened to fp32 and
`input_precision="ieee"`, which Triton lowers to FFMA loops over operands staged in shared memory: each thread
holds a block of outputs and reuses every loaded operand across it, the register reuse a direct Triton kernel
cannot express. The band's zeros now cost FMA issue slots (the useful fraction above is the ceiling), so the
narrow tiles (BN = 16) fit best: 65-78% FFMA in the hot loop at 128-256 x 16, ~30 predicted useful fp32 TFLOP/s at
56x56 k31 against ~3.4 for the direct kernel (`python -m bench.sass`).

Layouts: tensors are addressed through their strides, so channels_last works; its loads along a row are C
elements apart (no vectors), so the NCHW layout is the fast one for this backend.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .geometry import ConvCall
from .triton_kernels import _tap_window, _weight_taps

#: Longest filter side: the K walk of the forward covers BN + kw - 1 source columns per tile.
MAX_KERNEL = 127
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: (BLOCK_M output rows, BLOCK_N output columns) of the forward/backward-input; (BLOCK_I, BLOCK_J, BLOCK_X) of the
#: weight gradient (64 x 16 tap blocks for long-and-short filters such as 51x5). The first entry is the one the
#: interpreter runs.
CORRELATE_BLOCKS = [(64, 32), (64, 16), (32, 32), (128, 32), (64, 64), (16, 32), (128, 16), (256, 16)]
WGRAD_BLOCKS = [(32, 32, 16), (32, 32, 32), (16, 32, 32), (64, 64, 16), (64, 16, 32), (64, 16, 64)]


#: Warps per program: 4 and 8 on the tensor cores (wgmma runs on warpgroups of 4); on the CUDA cores also 2, where
#: each thread holds twice the outputs of a 4-warp program and reuses every operand it loads from shared memory
#: across them (a higher FMA share of the hot loop: `python -m bench.sass`).
TENSOR_CORE_WARPS = (4, 8)
CUDA_CORE_WARPS = (2, 4, 8)


def _configs(names, blocks):
    if _INTERPRET:
        return [triton.Config(dict(zip(names, blocks[0])), num_warps=1)]
    warps = sorted(set(TENSOR_CORE_WARPS) | set(CUDA_CORE_WARPS))
    return [triton.Config(dict(zip(names, b)), num_warps=w) for b in blocks for w in warps]


def _warps_for_precision(configs, named_args, **kwargs):
    """Autotune pruning: only the warp counts of the kind of core the call runs on (IEEE_FP32: the CUDA cores)."""
    if _INTERPRET:
        return configs
    warps = CUDA_CORE_WARPS if kwargs.get("IEEE_FP32") else TENSOR_CORE_WARPS
    return [c for c in configs if c.num_warps in warps] or configs


@triton.jit
def _direct_tile(base, wc, oy, x0, real, H, W, OW, s_sh, s_sw, KHC, KWC, OFF_T, OFF_L,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # The correlation of one tile, tap by tap on the CUDA cores: the exact products (padding is never
    # multiplied), for tiles whose tensor-core result is not finite. One output column at a time, so the rare
    # fallback holds a column of registers rather than a tile of pointers (which would cap the occupancy of
    # the whole kernel). `base`: each row's plane; `wc`: the channel's (KHC, KWC) taps.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    cols = tl.arange(0, BLOCK_N)
    for b in range(0, tl.minimum(BLOCK_N, OW - x0)):
        column = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for i in range(KHC):
            sy = oy + i - OFF_T
            row_ok = real & (sy >= 0) & (sy < H)
            rows = base + sy * s_sh
            for j in range(KWC):
                sx = x0 + b + j - OFF_L
                v = tl.load(rows + sx * s_sw, mask=row_ok & (sx >= 0) & (sx < W), other=0.0)
                column += v.to(tl.float32) * tl.load(wc + i * KWC + j).to(tl.float32)
        acc = tl.where(cols[None, :] == b, column[:, None], acc)
    return acc


@triton.jit
def _mma(a, b, acc, TF32: tl.constexpr, IEEE_FP32: tl.constexpr):
    # acc += a @ b: 16-bit operands as they are on the tensor cores, float32 as TF32 (opt-in). IEEE_FP32: both
    # operands widened to float32 and multiplied exactly, which Triton lowers to FMAs on the CUDA cores (the
    # `triton` backend's mode, see `forward(cuda_cores=True)`); the interpreter's 16-bit runs use it too, since
    # its dot mishandles bfloat16 operands (Triton 3.8) -- the same arithmetic: bf16 x bf16 products are exact in
    # fp32 and accumulation is fp32 either way.
    if IEEE_FP32:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif TF32:
        acc = tl.dot(a, b, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b.to(a.dtype), acc)
    return acc


@triton.autotune(configs=_configs(("BLOCK_M", "BLOCK_N"), CORRELATE_BLOCKS),
                 key=["N", "C", "H", "W", "OH", "OW", "KHC", "KWC", "OFF_T", "OFF_L", "ALIGN", "TF32", "IEEE_FP32"],
                 prune_configs_by={"early_config_prune": _warps_for_precision})
@triton.jit
def _toeplitz_correlate_kernel(src, w, band, bias, out, N, C, H, W, OH, OW,
                               s_sn, s_sc, s_sh, s_sw, o_sn, o_sc, o_sh, o_sw,
                               KHC, KWC, OFF_T, OFF_L, SHIFT, BAND_Q, BAND_L,
                               HAS_BIAS: tl.constexpr, TF32: tl.constexpr, IEEE_FP32: tl.constexpr,
                               ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program: BLOCK_M output rows of channel c, counted over the whole batch image fastest (row m is output
    # row m // N of image m % N: the images share the channel's T, and a tile spans few output rows, so few
    # filter rows), times BLOCK_N output columns.
    # `w`: the taps that can touch the map, (C, KHC, KWC) contiguous, already turned for backward-input;
    # `band`: the same taps laid out so that every T_i of every step is a block of aligned rows (_band_table).
    # The window starts SHIFT columns left of the first tap's, on a multiple of 16 columns of the map: the
    # 16-column steps then coincide with the map's own column blocks, so steps are either skipped (padding only)
    # or start at a real column. ALIGN: the rows of `src` start on ALIGN-element boundaries (16 bytes at most) and
    # the map width is a multiple of it, so the A loads from those 16-aligned columns are vector loads.
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1).to(tl.int64)
    x0 = tl.program_id(2) * BLOCK_N
    oy = m // N
    img = m - oy * N
    real = oy < OH
    ox = x0 + tl.arange(0, BLOCK_N)
    ka = tl.arange(0, 16)
    # The host guarantees these multiples of ALIGN; `// ALIGN * ALIGN` says so to Triton's alignment analysis
    # (tl.multiple_of cannot mark a scalar argument) at the cost of a few instructions outside the loops.
    s_sh = s_sh // ALIGN * ALIGN
    W = W // ALIGN * ALIGN
    base = src + (img.to(tl.int64) * s_sn + c * s_sc) // ALIGN * ALIGN  # each row's plane
    wc = w + c * KHC * KWC
    # Filter rows whose source rows meet the map for some row of the tile, and 16-column steps of the window
    # (source columns col0 + [0, BN + KWC - 1 + SHIFT)) that touch it: the rest reads padding only.
    y_lo = tl.min(tl.where(real, oy, OH))
    y_hi = tl.max(tl.where(real, oy, 0))
    i_lo = tl.maximum(0, OFF_T - y_hi)
    i_hi = tl.minimum(KHC, H + OFF_T - y_lo)
    col0 = x0 - (OFF_L + SHIFT) // ALIGN * ALIGN
    kb_lo = tl.maximum(0, -col0) // 16
    kb_hi = tl.minimum(tl.cdiv(tl.minimum(BLOCK_N, OW - x0) + KWC - 1 + SHIFT, 16), tl.cdiv(W - col0, 16))
    # T of filter row i at step kb: rows (c, i, a) of the band table, columns BAND_Q - 16 kb + [0, BN).
    BAND_L = BAND_L // 16 * 16
    band_rows = band + (c * KHC * 16 + ka[:, None]) * BAND_L + BAND_Q // 16 * 16 + tl.arange(0, BLOCK_N)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(i_lo, i_hi):
        sy = oy + i - OFF_T
        row_ok = real & (sy >= 0) & (sy < H)
        rows = base + sy * s_sh
        t_rows = band_rows + i * 16 * BAND_L
        for kb in range(kb_lo, kb_hi):
            sx = col0 + kb * 16 + ka
            a = tl.load(rows[:, None] + (sx * s_sw)[None, :], mask=row_ok[:, None] & ((sx >= 0) & (sx < W))[None, :],
                        other=0.0)
            acc = _mma(a, tl.load(t_rows - kb * 16), acc, TF32, IEEE_FP32)
    finite = (acc == acc) & (tl.abs(acc) < float("inf"))
    if tl.min(finite.to(tl.int32)) == 0:
        acc = _direct_tile(base, wc, oy, x0, real, H, W, OW, s_sh, s_sw, KHC, KWC, OFF_T, OFF_L, BLOCK_M, BLOCK_N)
    if HAS_BIAS:
        acc += tl.load(bias + c).to(tl.float32)
    dst = (out + (img.to(tl.int64) * o_sn + c * o_sc + oy * o_sh)[:, None] + ox.to(tl.int64)[None, :] * o_sw)
    tl.store(dst, acc.to(out.dtype.element_ty), mask=real[:, None] & (ox < OW)[None, :])


@triton.autotune(configs=_configs(("BLOCK_I", "BLOCK_J", "BLOCK_X"), WGRAD_BLOCKS),
                 key=["C", "H", "W", "OH", "OW", "KHC", "KWC", "SPLITS", "ALIGN", "TF32", "IEEE_FP32"],
                 prune_configs_by={"early_config_prune": _warps_for_precision})
@triton.jit
def _hankel_wgrad_kernel(x, g, partial, N, C, H, W, OH, OW,
                         x_sn, x_sc, x_sh, x_sw, g_sn, g_sc, g_sh, g_sw,
                         KI0, KJ0, KHC, KWC, PAD_T, PAD_L, SPLITS,
                         TF32: tl.constexpr, IEEE_FP32: tl.constexpr, ALIGN: tl.constexpr,
                         BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_X: tl.constexpr):
    # One program: a BLOCK_I x BLOCK_J block of channel c's (cropped) taps over a fixed range of the real input
    # rows (n, sy) of the batch. `x` is the input padded along the width by the convolution's own padding
    # (OW + KW - 1 columns), so the B loads (a sliding window of an input row, one column further per tap: they
    # cannot be vector loads) need no bounds test per element. ALIGN: the rows of `g` start on ALIGN-element
    # boundaries and OW is a multiple of it, so the A loads (output-gradient rows, from an aligned column on) are
    # vector loads.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    I_BLOCKS = tl.cdiv(KHC, BLOCK_I)
    J_BLOCKS = tl.cdiv(KWC, BLOCK_J)
    c = pid // (I_BLOCKS * J_BLOCKS)
    ib = (pid // J_BLOCKS) % I_BLOCKS
    jb = pid % J_BLOCKS
    ii = ib * BLOCK_I + tl.arange(0, BLOCK_I)
    jj = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    xs = tl.arange(0, BLOCK_X)
    rows = N * H
    chunk = tl.cdiv(rows, SPLITS)
    r0 = split * chunk
    r1 = tl.minimum(r0 + chunk, rows)
    xc = x + c.to(tl.int64) * x_sc
    gc = g + (c.to(tl.int64) * g_sc) // ALIGN * ALIGN
    shift = KJ0 + jj  # padded input column = output column + shift
    tap_ok = jj < KWC
    # Output columns whose input columns meet the map for some tap of the block.
    x_lo = tl.maximum(0, PAD_L - KJ0 - jb * BLOCK_J - (BLOCK_J - 1))
    x_hi = tl.minimum(OW, W + PAD_L - KJ0 - jb * BLOCK_J)
    g_sh_a = g_sh // ALIGN * ALIGN  # multiples of ALIGN (the host checked), said so to the alignment analysis
    g_sn_a = g_sn // ALIGN * ALIGN
    ow_a = OW // ALIGN * ALIGN
    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    for r in range(r0, r1):
        n = r // H
        sy = r - n * H
        oy = sy + PAD_T - KI0 - ii  # the output row that meets input row sy through tap row ii
        oy_top = sy + PAD_T - KI0 - ib * BLOCK_I
        if (oy_top >= 0) & (oy_top - (BLOCK_I - 1) < OH):
            oy_ok = (oy >= 0) & (oy < OH) & (ii < KHC)
            g_rows = gc + n.to(tl.int64) * g_sn_a + oy.to(tl.int64) * g_sh_a
            x_row = xc + n.to(tl.int64) * x_sn + sy.to(tl.int64) * x_sh
            # From an aligned column: the extra columns before x_lo and after x_hi meet only masked-out inputs.
            for x0 in range(x_lo // ALIGN * ALIGN, x_hi, BLOCK_X):
                ox = x0 + xs
                o_ok = ox < ow_a
                a = tl.load(g_rows[:, None] + (ox * g_sw)[None, :], mask=oy_ok[:, None] & o_ok[None, :], other=0.0)
                b = tl.load(x_row + (ox[:, None] + shift[None, :]) * x_sw, mask=o_ok[:, None] & tap_ok[None, :],
                            other=0.0)
                acc = _mma(a, b, acc, TF32, IEEE_FP32)
    finite = (acc == acc) & (tl.abs(acc) < float("inf"))
    if tl.min(finite.to(tl.int32)) == 0:
        # Exact products only (a non-finite input pixel met a masked-out position in the GEMM): recompute, one
        # output column at a time (an outer product of a tap-row vector and a tap-column vector), so the rare
        # fallback does not hold a 3-D product in registers.
        acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
        for r in range(r0, r1):
            n = r // H
            sy = r - n * H
            oy = sy + PAD_T - KI0 - ii
            oy_ok = (oy >= 0) & (oy < OH) & (ii < KHC)
            g_rows = gc + n.to(tl.int64) * g_sn + oy.to(tl.int64) * g_sh
            x_row = xc + n.to(tl.int64) * x_sn + sy.to(tl.int64) * x_sh
            for ox in range(x_lo, x_hi):
                a = tl.load(g_rows + ox * g_sw, mask=oy_ok, other=0.0).to(tl.float32)
                b = tl.load(x_row + (ox + shift) * x_sw, mask=tap_ok, other=0.0).to(tl.float32)
                acc += tl.where(oy_ok[:, None] & tap_ok[None, :], a[:, None] * b[None, :], 0.0)
    dst = partial + ((split * C + c) * KHC + ii[:, None]) * KWC + jj[None, :]
    tl.store(dst, acc, mask=(ii < KHC)[:, None] & (jj < KWC)[None, :])


def gemm_refusals(call: ConvCall):
    """What the Toeplitz/Hankel launchers cannot index, on either kind of core."""
    out = []
    if call.c > 65535:
        out.append(f"{call.c} channels: the forward's launch grid holds at most 65535 (its second dimension)")
    if call.c * max(call.h * call.w, call.out_h * call.out_w) >= 2**31:
        out.append("an image of 2^31 or more elements (the kernels index within an image in 32 bits)")
    return out


def tf32_allowed() -> bool:
    """Whether float32 may run on tensor cores as TF32: the user opted in the way PyTorch users do
    (`torch.set_float32_matmul_precision("high")` or "medium") and has not switched TF32 off for convolutions
    (`torch.backends.cudnn.allow_tf32 = False`)."""
    return torch.get_float32_matmul_precision() != "highest" and torch.backends.cudnn.allow_tf32


def _precision(t: torch.Tensor, cuda_cores: bool):
    """The kernels' (TF32, IEEE_FP32) flags: on the CUDA cores every dtype is widened to fp32 (exact products);
    on the tensor cores float32 runs as TF32, and bfloat16 takes the exact path under the interpreter only."""
    ieee = cuda_cores or (_INTERPRET and t.dtype == torch.bfloat16)
    return dict(TF32=t.dtype == torch.float32 and not ieee, IEEE_FP32=ieee)


def alignment_for(width: int, strides, element_size: int) -> int:
    """The largest ALIGN (elements, at most 16 bytes) dividing the row width and the strides: every row then
    starts on an ALIGN boundary and a row's 16-column steps load as vectors."""
    align = 1
    while align * 2 * element_size <= 16 and all(v % (align * 2) == 0 for v in (*strides, width)):
        align *= 2
    return align


def _alignment(t: torch.Tensor, width: int) -> int:
    # channels_last: a row's elements are C apart, no vectors. Triton assumes a pointer 16-byte aligned only
    # when it is.
    if t.stride(3) != 1 or t.data_ptr() % 16:
        return 1
    return alignment_for(width, t.stride()[:3], t.element_size())


def _band_table(taps: torch.Tensor, shift: int):
    """The Toeplitz bands of every filter row as aligned rows: (table, Q) with table (C, KHC, 16, L) such that
    T_i at step kb, T[a, b] = taps[c, i, 16 kb + a - b - shift] (0 outside the row), is
    table[c, i, a, Q - 16 kb + b] for b < BN. One gather per call (about 16 x (Q + 64) / KWC times the taps'
    size); it turns the band loads of the hot loop into plain vector loads, like the input's."""
    c, khc, kwc = taps.shape
    steps = triton.cdiv(max(n for _, n in CORRELATE_BLOCKS) + kwc - 1 + shift, 16)
    q = (steps - 1) * 16
    length = triton.cdiv(q + max(n for _, n in CORRELATE_BLOCKS), 16) * 16
    tap = (torch.arange(16, device=taps.device)[:, None] + q + -shift
           - torch.arange(length, device=taps.device)[None, :])
    inside = (tap >= 0) & (tap < kwc)
    table = torch.where(inside, taps[:, :, tap.clamp(0, kwc - 1)], torch.zeros((), dtype=taps.dtype,
                                                                                device=taps.device))
    return table.contiguous(), q


def _correlate(src, weight, bias, out, off_t: int, off_l: int, flip: bool, cuda_cores: bool):
    kh, kw = weight.shape[2:]
    if kh > kw:
        # A tall filter (51x5): the Toeplitz band goes along its long side, by running the transposed problem
        # (every tensor is addressed through its strides, so the transpose is free; the input's loads are then
        # strided instead of vectors, a good trade when the band would otherwise be mostly zeros).
        _correlate_rows(src.transpose(2, 3), weight.transpose(2, 3), bias, out.transpose(2, 3), off_l, off_t, flip,
                        cuda_cores)
    else:
        _correlate_rows(src, weight, bias, out, off_t, off_l, flip, cuda_cores)
    return out


def _correlate_rows(src, weight, bias, out, off_t: int, off_l: int, flip: bool, cuda_cores: bool):
    n, c, h, w = src.shape
    oh, ow = out.shape[2:]
    window = _tap_window(src, weight, bias, out, off_t, off_l)
    if window is None:
        return
    i0, i1, j0, j1 = window
    # The taps that can touch the map, turned for backward-input, contiguous: the band loads index it directly.
    taps = (weight.flip(2, 3) if flip else weight)[:, 0, i0:i1 + 1, j0:j1 + 1].to(src.dtype).contiguous()
    align = _alignment(src, w)
    off_l -= j0
    # A 14-wide map then takes one step per filter row and output block instead of two, a 28-wide one two
    # instead of three (the window's first column on a 16-column boundary of the map; also ALIGN-aligned).
    shift = (-off_l) % 16
    band, band_q = _band_table(taps, shift)

    def grid(meta):
        return (triton.cdiv(n * oh, meta["BLOCK_M"]), c, triton.cdiv(ow, meta["BLOCK_N"]))

    _toeplitz_correlate_kernel[grid](
        src, taps, band, bias if bias is not None else taps, out, n, c, h, w, oh, ow, *src.stride(), *out.stride(),
        i1 - i0 + 1, j1 - j0 + 1, off_t - i0, off_l, shift, band_q, band.shape[-1], HAS_BIAS=bias is not None,
        ALIGN=align, **_precision(src, cuda_cores))


def _like(call: ConvCall, h: int, w: int, t: torch.Tensor) -> torch.Tensor:
    fmt = torch.channels_last if call.channels_last else torch.contiguous_format
    return torch.empty((call.n, call.c, h, w), dtype=t.dtype, device=t.device, memory_format=fmt)


def forward(input, weight, bias, call: ConvCall, cuda_cores: bool = False):
    """cuda_cores: the same GEMMs as exact fp32 FMAs on the CUDA cores (every dtype; the `triton` backend)."""
    out = _like(call, call.out_h, call.out_w, input)
    return _correlate(input, weight, bias, out, call.padding[0], call.padding[2], flip=False, cuda_cores=cuda_cores)


def backward_input(grad_out, weight, call: ConvCall, cuda_cores: bool = False):
    grad_in = _like(call, call.h, call.w, grad_out)
    return _correlate(grad_out, weight, None, grad_in, call.kh - 1 - call.padding[0], call.kw - 1 - call.padding[2],
                      flip=True, cuda_cores=cuda_cores)


def wgrad_splits(c: int, khc: int, kwc: int, rows: int, block_i: int = 32, block_j: int = 32) -> int:
    """K splits of the weight gradient: enough programs for a large GPU, a function of the shape only (the
    fixed-order sum of the partials then makes the result reproducible)."""
    programs = c * triton.cdiv(khc, block_i) * triton.cdiv(kwc, block_j)
    return max(1, min(rows, triton.cdiv(1024, programs)))


def backward_weight(grad_out, input, call: ConvCall, cuda_cores: bool = False):
    grad_w = torch.zeros((call.c, 1, call.kh, call.kw), dtype=input.dtype, device=input.device)
    taps = _weight_taps(call)
    if taps is None:
        return grad_w
    i0, j0, khc, kwc = taps
    splits = wgrad_splits(call.c, khc, kwc, call.n * call.h)
    partial = torch.empty((splits, call.c, khc, kwc), dtype=torch.float32, device=input.device)

    def grid(meta):
        return (call.c * triton.cdiv(khc, meta["BLOCK_I"]) * triton.cdiv(kwc, meta["BLOCK_J"]), splits)

    # Padded along the width only (the kernel walks real input rows): no bounds test per B element.
    padded = torch.nn.functional.pad(input, (call.padding[2], call.padding[3]))
    _hankel_wgrad_kernel[grid](padded, grad_out, partial, call.n, call.c, call.h, call.w, call.out_h, call.out_w,
                               *padded.stride(), *grad_out.stride(), i0, j0, khc, kwc, call.padding[0],
                               call.padding[2], splits, ALIGN=_alignment(grad_out, call.out_w),
                               **_precision(input, cuda_cores))
    grad_w[:, 0, i0:i0 + khc, j0:j0 + kwc] = partial.sum(dim=0).to(input.dtype)
    return grad_w
