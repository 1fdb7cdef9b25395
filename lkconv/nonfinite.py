"""Non-finite values: one rule for every backend and pass, applied here, in the op layer.

The rule ("padding is absent"): a product of a filter tap with padding does not exist, whatever the tap holds.
So a non-finite weight makes exactly those outputs non-finite where it multiplies a real pixel, a non-finite
output gradient reaches exactly the input pixels and filter taps it meets through real pixels, and a tap that
only ever reads padding gets a zero weight gradient. This is what PyTorch's own CPU convolution does for the
forward and backward-input in both layouts and for the channels_last weight gradient (its NCHW weight gradient
multiplies padding for k >= 5, its CUDA paths are not specified); it is also what a tap-skipping kernel computes
for free, and it makes a non-finite value's reach independent of how a backend tiles the padding.

The fast kernels multiply a zero halo (that is how they stay branch-free), so a non-finite weight (forward,
backward-input) or output gradient (backward-weight) would also poison outputs through padding. The op layer
therefore runs the backend on the operand with its non-finite entries zeroed and then marks NaN exactly where
the rule says a non-finite value arrives (positions computed from the geometry, not from the backend). Values
there are NaN even where IEEE arithmetic would give +-Inf (an Inf weight times a real positive pixel); the
finite/non-finite pattern is exact. Non-finite *inputs* never meet padding and need nothing here.

Cost: on the CPU a finiteness check of the weight (C*kh*kw values) or of the output gradient (one pass) decides
whether anything is done. On CUDA the check would need a host sync (and would break CUDA-graph capture), so the
fix-up always runs there, asynchronously: a masked copy of the operand and a small mask computation, plus one
pass over the result that changes nothing when every value is finite.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .geometry import output_size


def _reach(out_len: int, in_len: int, k: int, before: int, stride: int, dilation: int,
           device: torch.device) -> torch.Tensor:
    """R[o, i] = 1 where output position o reads a real pixel through tap i (float, for contractions)."""
    o = torch.arange(out_len, device=device).view(-1, 1)
    i = torch.arange(k, device=device).view(1, -1)
    pos = o * stride + i * dilation - before
    return ((pos >= 0) & (pos < in_len)).float()


def _pixel_of(out_len: int, in_len: int, k: int, before: int, stride: int, dilation: int,
              device: torch.device) -> torch.Tensor:
    """Q[p, i] = 1 where input pixel p is read through tap i by some output position."""
    q = torch.zeros(in_len, k, device=device)
    reach = _reach(out_len, in_len, k, before, stride, dilation, device)
    o, i = reach.nonzero(as_tuple=True)
    q[o * stride + i * dilation - before, i] = 1.0
    return q


def _must_check(t: torch.Tensor) -> bool:
    """Whether the fix-up may be needed: an exact check on the CPU; always on other devices (no host sync)."""
    if t.device.type == "cpu":
        # A sum is one vectorised pass without a mask tensor (a third of isfinite().all()'s time); it is finite
        # whenever every entry is, so only a non-finite sum (or an overflow) needs the exact check.
        if t.numel() and math.isfinite(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else None).item()):
            return False
        return not bool(torch.isfinite(t).all())
    return True


def _finite_part(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    bad = ~torch.isfinite(t)
    return torch.where(bad, torch.zeros((), dtype=t.dtype, device=t.device), t), bad


def _mark(result: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """result with NaN where mask (broadcast) is positive."""
    nan = torch.full((), float("nan"), dtype=result.dtype, device=result.device)
    return torch.where(mask > 0, nan, result)


def _geometry(padding: List[int], stride: List[int], dilation: List[int]):
    return (padding[0], padding[2]), tuple(stride), tuple(dilation)


def _weight_fixup(run, weight: torch.Tensor, reach_y, reach_x) -> torch.Tensor:
    """run(finite weight), then NaN where a non-finite weight arrives: reach_y (rows x kh) and reach_x
    (cols x kw) say which result positions each tap reaches through real pixels."""
    w, bad = _finite_part(weight)
    result = run(w)
    mask = torch.einsum("cij,yi,xj->cyx", bad[:, 0].float(), reach_y(), reach_x())
    return _mark(result, mask.unsqueeze(0))


def forward(run, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: List[int],
            stride: List[int], dilation: List[int]) -> torch.Tensor:
    """run(input, weight, bias) under the rule: non-finite weights reach the outputs where they meet real pixels."""
    if not _must_check(weight):
        return run(input, weight, bias)
    (pt, pl), (sh, sw), (dh, dw) = _geometry(padding, stride, dilation)
    (h, wd), (kh, kw) = input.shape[2:], weight.shape[2:]
    oh, ow = output_size(h, kh, padding[0], padding[1], sh, dh), output_size(wd, kw, padding[2], padding[3], sw, dw)
    return _weight_fixup(lambda w: run(input, w, bias), weight,
                         lambda: _reach(oh, h, kh, pt, sh, dh, input.device),
                         lambda: _reach(ow, wd, kw, pl, sw, dw, input.device))


def backward_input(run, grad_out: torch.Tensor, weight: torch.Tensor, input_hw: List[int], padding: List[int],
                   stride: List[int], dilation: List[int]) -> torch.Tensor:
    """run(grad_out, weight) under the rule: a non-finite weight reaches the input pixels it reads."""
    if not _must_check(weight):
        return run(grad_out, weight)
    (pt, pl), (sh, sw), (dh, dw) = _geometry(padding, stride, dilation)
    (oh, ow), (kh, kw) = grad_out.shape[2:], weight.shape[2:]
    return _weight_fixup(lambda w: run(grad_out, w), weight,
                         lambda: _pixel_of(oh, input_hw[0], kh, pt, sh, dh, grad_out.device),
                         lambda: _pixel_of(ow, input_hw[1], kw, pl, sw, dw, grad_out.device))


def backward_weight(run, grad_out: torch.Tensor, input: torch.Tensor, kernel_hw: List[int], padding: List[int],
                    stride: List[int], dilation: List[int]) -> torch.Tensor:
    """run(grad_out, input) under the rule: a non-finite output gradient reaches the taps that read a real pixel
    from its position."""
    if not _must_check(grad_out):
        return run(grad_out, input)
    g, bad = _finite_part(grad_out)
    grad_w = run(g, input)
    (pt, pl), (sh, sw), (dh, dw) = _geometry(padding, stride, dilation)
    oh, ow = grad_out.shape[2:]
    h, wd = input.shape[2:]
    ry = _reach(oh, h, kernel_hw[0], pt, sh, dh, input.device)
    rx = _reach(ow, wd, kernel_hw[1], pl, sw, dw, input.device)
    count = bad.sum(dim=0, dtype=torch.float32)  # (C, OH, OW): non-finite gradients per position
    mask = torch.einsum("cyx,yi,xj->cij", count, ry, rx)
    return _mark(grad_w, mask.unsqueeze(1))
