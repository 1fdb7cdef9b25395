"""Argument normalisation for depthwise convolution: padding rules, output sizes, and the call description
the backends judge.

Everything here follows `torch.nn.functional.conv2d`: 'same' pads `dilation * (k - 1)` in total, the smaller
half before and the larger after (so even kernels pad one more at the bottom/right), 'valid' pads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

IntPair = Union[int, Sequence[int]]
Padding = Union[str, int, Sequence[int]]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class UnplannableCall(Exception):
    """The call is not a well-formed depthwise conv that the lkconv op handles; it goes to F.conv2d as is."""


def pair(value: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list, torch.Size)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise UnplannableCall(f"{name} must be an int or a pair of ints, got {value!r}")


def resolve_padding(padding: Padding, kernel: Tuple[int, int], stride: Tuple[int, int],
                    dilation: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) padding, following F.conv2d's rules for ints, pairs, 'same' and 'valid'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise UnplannableCall("padding='same' is not supported for strided convolutions")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)  # type: ignore[return-value]
        raise UnplannableCall(f"invalid padding string {padding!r}")
    ph, pw = pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise UnplannableCall(f"padding must be non-negative, got {padding!r}")
    return (ph, ph, pw, pw)


def output_size(size: int, kernel: int, before: int, after: int, stride: int, dilation: int) -> int:
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ConvCall:
    """A depthwise conv as the backends see it: geometry of the forward pass plus device, dtype and layout."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    padding: Tuple[int, int, int, int]  # top, bottom, left, right
    stride: Tuple[int, int]
    dilation: Tuple[int, int]
    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    pass_name: str = "forward"  # which op asks: "forward", "backward_input" or "backward_weight"

    @property
    def out_h(self) -> int:
        return output_size(self.h, self.kh, self.padding[0], self.padding[1], self.stride[0], self.dilation[0])

    @property
    def out_w(self) -> int:
        return output_size(self.w, self.kw, self.padding[2], self.padding[3], self.stride[1], self.dilation[1])

    @property
    def unit_stride_dilation(self) -> bool:
        return self.stride == (1, 1) and self.dilation == (1, 1)

    def useful_taps(self) -> int:
        """Filter taps, summed over output pixels, that read a real pixel (not padding): the useful MACs per
        (n, c) plane. Used for the "useful" FLOP counts of the benchmarks."""

        def per_axis(size, k, before, stride, dil, out):
            count = 0
            for o in range(out):
                for i in range(k):
                    pos = o * stride + i * dil - before
                    count += 0 <= pos < size
            return count

        return per_axis(self.h, self.kh, self.padding[0], self.stride[0], self.dilation[0], self.out_h) * per_axis(
            self.w, self.kw, self.padding[2], self.stride[1], self.dilation[1], self.out_w)


def plan(input, weight, bias: Optional[torch.Tensor], stride: IntPair, padding: Padding,
         dilation: IntPair) -> ConvCall:
    """Validate a call for the lkconv op; raises UnplannableCall for anything the op does not take."""
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise UnplannableCall("input and weight must be tensors")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise UnplannableCall("bias must be a tensor or None")
        if bias.dim() != 1 or weight.dim() < 1 or bias.shape[0] != weight.shape[0]:
            raise UnplannableCall(f"bias must have shape (C,), got {tuple(bias.shape)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise UnplannableCall("bias dtype/device differ from the input's")
    return describe(input, weight, stride, padding, dilation)


def describe(input: torch.Tensor, weight: torch.Tensor, stride: IntPair = 1, padding: Padding = 0,
             dilation: IntPair = 1) -> ConvCall:
    """The ConvCall for `F.conv2d(input, weight, stride=..., padding=..., dilation=..., groups=C)`; raises
    UnplannableCall for anything the lkconv op does not take."""
    if input.dim() != 4:
        raise UnplannableCall(f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    n, c, h, w = input.shape
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1:
        raise UnplannableCall(f"depthwise weight must have shape ({c}, 1, kh, kw), got {tuple(weight.shape)}")
    if input.dtype not in SUPPORTED_DTYPES or weight.dtype != input.dtype:
        raise UnplannableCall(f"dtypes {input.dtype}/{weight.dtype} are not one floating dtype")
    if weight.device != input.device:
        raise UnplannableCall(f"input on {input.device} but weight on {weight.device}")
    if n == 0 or c == 0 or h == 0 or w == 0:
        raise UnplannableCall(f"empty input of shape {tuple(input.shape)}")
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    if kh == 0 or kw == 0:
        raise UnplannableCall("empty filter")
    st, dil = pair(stride, "stride"), pair(dilation, "dilation")
    if min(st) < 1 or min(dil) < 1:
        raise UnplannableCall("stride and dilation must be positive")
    pads = resolve_padding(padding, (kh, kw), st, dil)
    call = ConvCall(int(n), int(c), int(h), int(w), kh, kw, pads, st, dil, input.device, input.dtype,
                    is_channels_last(input))
    if call.out_h <= 0 or call.out_w <= 0:
        raise UnplannableCall("the output would be empty (kernel larger than the padded input)")
    return call


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-D tensor is laid out channels-last (also for views), so outputs should be too.

    Plainly contiguous tensors count as NCHW; other views need channel stride < width stride < height stride."""
    if t.dim() != 4 or t.is_contiguous():
        return False
    if t.is_contiguous(memory_format=torch.channels_last):
        return True
    size, stride = t.shape, t.stride()
    if min(size[1:]) == 1:  # ambiguous views: treat as NCHW
        return False
    return stride[1] < stride[3] < stride[2]


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format
