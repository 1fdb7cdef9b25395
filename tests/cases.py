"""Shapes of the correctness suite: every kernel size of the contract, crossed with map sizes (including 1,
odd sizes and maps smaller than the kernel), batch and channel counts, layouts, padding forms and bias."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from lkconv.geometry import UnplannableCall, output_size, resolve_padding

KERNELS = [(1, 1), (2, 2), (3, 3), (4, 4), (7, 7), (13, 13), (31, 31), (51, 51), (51, 5), (5, 51), (3, 7)]
MAPS = [(1, 1), (5, 7), (9, 9), (16, 13), (20, 24), (6, 57)]
BATCH_CHANNELS = [(1, 1), (3, 3), (1, 64), (3, 3)]
LAYOUTS = ["nchw", "channels_last", "strided", "permuted"]
PADDINGS = ["same", 0, "half", (1, 3), "valid", "large"]


@dataclass(frozen=True)
class Case:
    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    layout: str
    padding: object
    bias: bool

    @property
    def id(self) -> str:
        return (f"n{self.n}c{self.c}_{self.h}x{self.w}_k{self.kh}x{self.kw}_{self.layout}_"
                f"p{str(self.padding).replace(' ', '')}_{'b' if self.bias else 'nob'}")


def _padding(spec, kh, kw):
    if spec == "half":
        return (kh // 2, kw // 2)
    if spec == "large":  # more padding than the kernel reaches
        return (kh + 1, kw // 2 + 2)
    return spec


def _valid(n, c, h, w, kh, kw, padding) -> bool:
    try:
        pads = resolve_padding(padding, (kh, kw), (1, 1), (1, 1))
    except UnplannableCall:
        return False
    return output_size(h, kh, pads[0], pads[1], 1, 1) > 0 and output_size(w, kw, pads[2], pads[3], 1, 1) > 0


def cases(per_kernel: int = 4, max_kernel: int = 99, max_channels: int = 64, max_map: int = 99):
    """`per_kernel` cases for each kernel size, cycling through the other parameters so that each value of
    each parameter appears with several kernels."""
    out = []
    cycle = itertools.count()
    for kh, kw in KERNELS:
        if max(kh, kw) > max_kernel:
            continue
        made = 0
        while made < per_kernel:
            i = next(cycle)
            h, w = MAPS[i % len(MAPS)]
            n, c = BATCH_CHANNELS[(i // 2) % len(BATCH_CHANNELS)]
            if c > max_channels or max(h, w) > max_map:
                continue
            padding = _padding(PADDINGS[(i * 5 + kh) % len(PADDINGS)], kh, kw)
            if not _valid(n, c, h, w, kh, kw, padding):
                padding = "same"
            out.append(Case(n, c, h, w, kh, kw, LAYOUTS[(i // 3) % len(LAYOUTS)], padding, bool(i % 2)))
            made += 1
    return out


def make_inputs(case: Case, dtype: torch.dtype, device="cpu"):
    """(x64, x): the same values (rounded to `dtype`) in the case's layout, in float64 and in `dtype`."""
    if case.layout == "strided":  # every other row and column of a larger tensor
        big = torch.randn(case.n, case.c, 2 * case.h, 2 * case.w + 1, device=device).to(dtype)
        view = lambda t: t[:, :, ::2, 1::2]  # noqa: E731
    elif case.layout == "permuted":  # H and W swapped in memory
        big = torch.randn(case.n, case.c, case.w, case.h, device=device).to(dtype)
        view = lambda t: t.transpose(2, 3)  # noqa: E731
    else:
        fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
        big = torch.randn(case.n, case.c, case.h, case.w, device=device).to(dtype).contiguous(memory_format=fmt)
        view = lambda t: t  # noqa: E731
    return view(big.double()), view(big)
