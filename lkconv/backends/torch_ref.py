"""The reference backend: PyTorch's own convolution. Runs every call; the fallback.

PyTorch's CPU conv backward is unreliable when the filter is larger than the feature map (torch 2.14 crashed
or returned NaN for a 51x5 filter on a 16x13 map), so for stride 1 / dilation 1 such calls compute the
gradients with forward convolutions: backward-input as the conv of the padded output gradient with the
turned filter, backward-weight as a grouped conv of the input with the output gradient as the filter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import ConvCall, memory_format_of
from .base import Backend


def _symmetric(call: ConvCall) -> bool:
    t, b, l, r = call.padding
    return t == b and l == r


def _padded(x: torch.Tensor, call: ConvCall) -> torch.Tensor:
    t, b, l, r = call.padding
    return F.pad(x, (l, r, t, b))


class TorchBackend(Backend):
    name = "torch"

    def forward(self, input, weight, bias, call):
        if _symmetric(call):
            out = F.conv2d(input, weight, bias, call.stride, (call.padding[0], call.padding[2]), call.dilation,
                           groups=call.c)
        else:
            out = F.conv2d(_padded(input, call), weight, bias, call.stride, 0, call.dilation, groups=call.c)
        return out.contiguous(memory_format=_format(input))

    def _conv_backward(self, grad_out, input_like, weight, call, mask):
        sym = _symmetric(call)
        padding = [call.padding[0], call.padding[2]] if sym else [0, 0]
        if not sym:
            input_like = _padded(input_like, call)
        gi, gw, _ = torch.ops.aten.convolution_backward(
            grad_out, input_like, weight, None, list(call.stride), padding, list(call.dilation), False, [0, 0],
            call.c, mask)
        return gi, gw

    def backward_input(self, grad_out, weight, call):
        if _filter_exceeds_map(call):
            t, _, l, _ = call.padding
            gp = F.pad(grad_out, (call.kw - 1, call.kw - 1, call.kh - 1, call.kh - 1))
            full = F.conv2d(gp, weight.flip(2, 3), groups=call.c)
            return full[:, :, t:t + call.h, l:l + call.w].contiguous(memory_format=_format(grad_out))
        # The input's values do not enter the input gradient; only its shape does.
        # In grad_out's memory format: a layout mismatch sends oneDNN down a path ~20x slower plus two copies.
        dummy = torch.empty((call.n, call.c, call.h, call.w), dtype=grad_out.dtype, device=grad_out.device,
                            memory_format=_format(grad_out))
        gi, _ = self._conv_backward(grad_out, dummy, weight, call, [True, False, False])
        if not _symmetric(call):
            t, _, l, _ = call.padding
            gi = gi[:, :, t:t + call.h, l:l + call.w]
        return gi.contiguous(memory_format=_format(grad_out))

    def backward_weight(self, grad_out, input, call):
        if _filter_exceeds_map(call):
            xp = _padded(input, call)
            # Channels become groups and the batch the members of each group: out[c] = sum_n corr(x[n,c], g[n,c]).
            xp = xp.transpose(0, 1).reshape(1, call.c * call.n, *xp.shape[2:])
            return F.conv2d(xp, grad_out.transpose(0, 1), groups=call.c).transpose(0, 1).contiguous()
        _, gw = self._conv_backward(grad_out, input, grad_out.new_empty((call.c, 1, call.kh, call.kw)), call,
                                    [False, True, False])
        return gw.contiguous()


def _filter_exceeds_map(call: ConvCall) -> bool:
    return call.unit_stride_dilation and (call.kh > call.h or call.kw > call.w)


def _format(t: torch.Tensor) -> torch.memory_format:
    return memory_format_of(t)
