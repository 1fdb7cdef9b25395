"""Direct Triton kernels of the depthwise convolution: forward, backward-input and backward-weight.

The `triton` backend runs NCHW calls as the Toeplitz/Hankel GEMMs of tensorcore_kernels.py on the CUDA cores
(IEEE fp32 products: operands reused from registers); these direct kernels run its channels_last calls and the
NCHW calls those GEMMs cannot index (over 65535 channels, an image of 2^31 elements).

Forward and backward-input are one correlation kernel (backward-input reads the filter turned by 180 degrees
with mirrored padding), in two tilings: a 2-D spatial tile per plane for NCHW tensors, and pixels x channels
tiles for channels_last tensors, so loads are contiguous in either layout. Backward-weight gives each program
one (channel, filter row) pair and a fixed slice of the (batch, pixel) positions; programs *store* partial sums
(no atomics), which are added in a fixed order afterwards, so the result is deterministic and autotuning
trials need no zeroed accumulators (every trial overwrites its whole output).

All kernels address tensors through their strides, accumulate in float32, and skip filter taps that only
ever read padding (a 51x51 filter on a 7x7 map costs what a 13x13 one does).

Under TRITON_INTERPRET=1 they run on CPU tensors (slowly) for testing; autotuning is then a single config.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .geometry import ConvCall

MAX_KERNEL = 127
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(blocks, warps=(4, 8)):
    if _INTERPRET:
        return [triton.Config(dict(zip(blocks[0][0], blocks[0][1])), num_warps=1)]
    return [triton.Config(dict(zip(names, values)), num_warps=w) for names, values in blocks for w in warps]


_NCHW_BLOCKS = [(("BLOCK_H", "BLOCK_W"), v) for v in ((8, 16), (16, 32), (32, 32), (8, 64), (16, 64))]
_CL_BLOCKS = [(("BLOCK_P", "BLOCK_C"), v) for v in ((16, 16), (32, 32), (64, 32), (16, 64), (32, 64))]
_WGRAD_BLOCKS = [(("BLOCK_P",), (v,)) for v in (16, 32, 64)]
# Autotuning keys; triton adds the dtypes of the tensor arguments itself.
_KEY = ["C", "H", "W", "OH", "OW", "KH", "KW", "KHC", "KWC", "FLIP"]


@triton.jit
def _filter_tap(w, c, i, j, KH, KW, KI0, KJ0, w_sc, w_sh, w_sw, FLIP: tl.constexpr):
    fi = KI0 + i
    fj = KJ0 + j
    if FLIP:
        fi = KH - 1 - fi
        fj = KW - 1 - fj
    return w + c * w_sc + fi * w_sh + fj * w_sw


@triton.autotune(configs=_configs(_NCHW_BLOCKS), key=_KEY)
@triton.jit
def _correlate_nchw_kernel(src, w, bias, out, C, H, W, OH, OW,
                           s_sn, s_sc, s_sh, s_sw, o_sn, o_sc, o_sh, o_sw, w_sc, w_sh, w_sw,
                           KH, KW, KI0, KJ0, KHC, KWC, OFF_T, OFF_L,
                           FLIP: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    n = plane // C
    c = plane % C
    oy = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ox = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    base = src + n * s_sn + c * s_sc
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for i in range(KHC):
        sy = oy + i - OFF_T
        row_ok = (sy >= 0) & (sy < H)
        row = base + sy.to(tl.int64) * s_sh
        for j in range(KWC):
            sx = ox + j - OFF_L
            v = tl.load(row + sx.to(tl.int64) * s_sw, mask=row_ok & (sx >= 0) & (sx < W), other=0.0)
            wv = tl.load(_filter_tap(w, c, i, j, KH, KW, KI0, KJ0, w_sc, w_sh, w_sw, FLIP))
            acc += v.to(tl.float32) * wv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias + c).to(tl.float32)
    dst = out + n * o_sn + c * o_sc + oy.to(tl.int64) * o_sh + ox.to(tl.int64) * o_sw
    tl.store(dst, acc.to(out.dtype.element_ty), mask=(oy < OH) & (ox < OW))


@triton.autotune(configs=_configs(_CL_BLOCKS), key=_KEY)
@triton.jit
def _correlate_cl_kernel(src, w, bias, out, N, C, H, W, OH, OW,
                         s_sn, s_sc, s_sh, s_sw, o_sn, o_sc, o_sh, o_sw, w_sc, w_sh, w_sw,
                         KH, KW, KI0, KJ0, KHC, KWC, OFF_T, OFF_L,
                         FLIP: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pix = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    pix_ok = pix < N * OH * OW
    n = pix // (OH * OW)
    rem = pix % (OH * OW)
    oy = rem // OW
    ox = rem % OW
    c64 = c.to(tl.int64)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in range(KHC):
        sy = oy + i - OFF_T
        row_ok = pix_ok & (sy >= 0) & (sy < H)
        for j in range(KWC):
            sx = ox + j - OFF_L
            ok = row_ok & (sx >= 0) & (sx < W)
            ptr = src + (n * s_sn + sy * s_sh + sx * s_sw)[:, None] + (c64 * s_sc)[None, :]
            v = tl.load(ptr, mask=ok[:, None] & c_ok[None, :], other=0.0)
            wv = tl.load(_filter_tap(w, c64, i, j, KH, KW, KI0, KJ0, w_sc, w_sh, w_sw, FLIP), mask=c_ok, other=0.0)
            acc += v.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    dst = out + (n * o_sn + oy * o_sh + ox * o_sw)[:, None] + (c64 * o_sc)[None, :]
    tl.store(dst, acc.to(out.dtype.element_ty), mask=pix_ok[:, None] & c_ok[None, :])


@triton.autotune(configs=_configs(_WGRAD_BLOCKS), key=["C", "H", "W", "OH", "OW", "KHC", "KWC", "SPLITS"])
@triton.jit
def _wgrad_kernel(x, g, partial, N, C, H, W, OH, OW,
                  x_sn, x_sc, x_sh, x_sw, g_sn, g_sc, g_sh, g_sw,
                  KI0, KJ0, KHC, KWC, PAD_T, PAD_L, SPLITS,
                  BLOCK_J: tl.constexpr, BLOCK_P: tl.constexpr):
    # One program: filter row i of channel c over a fixed range of (image, output row) pairs. Row indices are
    # scalar (uniform) arithmetic done once per row, a row whose input row is padding is skipped whole, and the
    # products accumulate into a (columns x taps) tile with FMAs that is reduced once, after the loop.
    # grad_out holds no non-finite values here (the op layer's non-finite rule zeroes them, nonfinite.py), so
    # a masked (padding) input of 0 contributes exactly 0.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    c = pid // KHC
    i = pid % KHC
    j = tl.arange(0, BLOCK_J)
    j_ok = j < KWC
    rows = N * OH
    chunk = tl.cdiv(rows, SPLITS)
    r0 = split * chunk
    r1 = tl.minimum(r0 + chunk, rows)
    xc = x + c.to(tl.int64) * x_sc
    gc = g + c.to(tl.int64) * g_sc
    acc = tl.zeros((BLOCK_P, BLOCK_J), dtype=tl.float32)
    for r in range(r0, r1):
        n = r // OH
        oy = r - n * OH
        sy = oy + KI0 + i - PAD_T
        if (sy >= 0) & (sy < H):
            x_row = xc + n.to(tl.int64) * x_sn + sy.to(tl.int64) * x_sh
            g_row = gc + n.to(tl.int64) * g_sn + oy.to(tl.int64) * g_sh
            for ox0 in range(0, OW, BLOCK_P):
                ox = ox0 + tl.arange(0, BLOCK_P)
                o_ok = ox < OW
                gv = tl.load(g_row + ox * g_sw, mask=o_ok, other=0.0).to(tl.float32)
                sx = ox[:, None] + (KJ0 - PAD_L + j)[None, :]
                ok = o_ok[:, None] & j_ok[None, :] & (sx >= 0) & (sx < W)
                xv = tl.load(x_row + sx * x_sw, mask=ok, other=0.0).to(tl.float32)
                acc = tl.fma(gv[:, None], xv, acc)
    dst = partial + ((split * C + c) * KHC + i) * KWC + j
    tl.store(dst, tl.sum(acc, axis=0), mask=j_ok)


def _useful_taps(k: int, src_len: int, out_len: int, offset: int):
    """Taps [lo, hi] of a filter side that can touch real pixels when out[y] reads src[y + i - offset]."""
    return max(0, offset - out_len + 1), min(k - 1, offset + src_len - 1)


def _tap_window(src: torch.Tensor, weight: torch.Tensor, bias, out: torch.Tensor, off_t: int, off_l: int):
    """(i0, i1, j0, j1): the taps of a correlation `out[y, x] += src[y + i - off_t, x + j - off_l] w[i, j]` that can
    touch the map; None after filling `out` with the bias when every tap reads padding only."""
    (h, w), (oh, ow), (kh, kw) = src.shape[2:], out.shape[2:], weight.shape[2:]
    i0, i1 = _useful_taps(kh, h, oh, off_t)
    j0, j1 = _useful_taps(kw, w, ow, off_l)
    if i1 < i0 or j1 < j0:
        out.copy_(bias.view(1, -1, 1, 1).expand_as(out) if bias is not None else torch.zeros_like(out))
        return None
    return i0, i1, j0, j1


def _correlate(src: torch.Tensor, weight: torch.Tensor, bias, out: torch.Tensor, off_t: int, off_l: int,
               flip: bool) -> torch.Tensor:
    n, c, h, w = src.shape
    oh, ow = out.shape[2:]
    kh, kw = weight.shape[2:]
    window = _tap_window(src, weight, bias, out, off_t, off_l)
    if window is None:
        return out
    i0, i1, j0, j1 = window
    args = (weight, bias if bias is not None else weight, out)
    geometry = (*src.stride(), *out.stride(), weight.stride(0), weight.stride(2), weight.stride(3),
                kh, kw, i0, j0, i1 - i0 + 1, j1 - j0 + 1, off_t - i0, off_l - j0)
    if src.stride(1) == 1 and c > 1:  # channels_last: tile pixels x channels
        def grid(meta):
            return (triton.cdiv(n * oh * ow, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]))

        _correlate_cl_kernel[grid](src, *args, n, c, h, w, oh, ow, *geometry, FLIP=flip,
                                   HAS_BIAS=bias is not None)
    else:
        def grid(meta):
            return (n * c, triton.cdiv(oh, meta["BLOCK_H"]), triton.cdiv(ow, meta["BLOCK_W"]))

        _correlate_nchw_kernel[grid](src, *args, c, h, w, oh, ow, *geometry, FLIP=flip,
                                     HAS_BIAS=bias is not None)
    return out


def _format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def forward(input: torch.Tensor, weight: torch.Tensor, bias, call: ConvCall) -> torch.Tensor:
    out = torch.empty((call.n, call.c, call.out_h, call.out_w), dtype=input.dtype, device=input.device,
                      memory_format=_format(call.channels_last))
    return _correlate(input, weight, bias, out, call.padding[0], call.padding[2], flip=False)


def backward_input(grad_out: torch.Tensor, weight: torch.Tensor, call: ConvCall) -> torch.Tensor:
    grad_in = torch.empty((call.n, call.c, call.h, call.w), dtype=grad_out.dtype, device=grad_out.device,
                          memory_format=_format(call.channels_last))
    return _correlate(grad_out, weight, None, grad_in, call.kh - 1 - call.padding[0],
                      call.kw - 1 - call.padding[2], flip=True)


def _weight_taps(call: ConvCall):
    """(i0, j0, rows, cols): the block of taps whose weight gradient can be non-zero (they meet real pixels);
    None when no tap does."""
    i0, i1 = _useful_taps(call.kh, call.h, call.out_h, call.padding[0])
    j0, j1 = _useful_taps(call.kw, call.w, call.out_w, call.padding[2])
    return None if i1 < i0 or j1 < j0 else (i0, j0, i1 - i0 + 1, j1 - j0 + 1)


def backward_weight(grad_out: torch.Tensor, input: torch.Tensor, call: ConvCall) -> torch.Tensor:
    grad_w = torch.zeros((call.c, 1, call.kh, call.kw), dtype=input.dtype, device=input.device)
    taps = _weight_taps(call)
    if taps is None:
        return grad_w
    i0, j0, khc, kwc = taps
    # Enough programs to fill a large GPU, each over whole output rows; the count depends on the shape only
    # (reproducible results).
    splits = max(1, min(call.n * call.out_h, triton.cdiv(2048, call.c * khc)))
    partial = torch.empty((splits, call.c, khc, kwc), dtype=torch.float32, device=input.device)
    _wgrad_kernel[(call.c * khc, splits)](
        input, grad_out, partial, call.n, call.c, call.h, call.w, call.out_h, call.out_w,
        *input.stride(), *grad_out.stride(), i0, j0, khc, kwc, call.padding[0], call.padding[2], splits,
        BLOCK_J=triton.next_power_of_2(kwc))
    grad_w[:, 0, i0:i0 + khc, j0:j0 + kwc] = partial.sum(dim=0).to(input.dtype)
    return grad_w
