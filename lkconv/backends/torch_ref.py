"""The reference backend: PyTorch's own convolution. Runs every call; the fallback.

PyTorch's CPU conv backward is unreliable when the filter is larger than the feature map (torch 2.14 crashed
or returned NaN for a 51x5 filter on a 16x13 map), so for stride 1 / dilation 1 the input gradient is always a
forward convolution (of the padded output gradient with the turned filter, also the faster way on the CPU) and
such calls compute the weight gradient as a grouped conv of the input with the output gradient as the filter.
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
        if call.unit_stride_dilation:
            # The input gradient of a stride-1 correlation is the correlation of the output gradient with the
            # turned filter, padded by k - 1 - (the forward's padding) on each side. A forward oneDNN kernel runs
            # it as fast as the forward; aten.convolution_backward needs an input-shaped tensor, and with a fresh
            # (untouched) one it ran 7x slower (1.3 vs 0.18 ms, 56x56, 128 channels, batch 4, channels_last).
            t, b, l, r = call.padding
            turned = weight.flip(2, 3)
            pads = (call.kh - 1 - t, call.kh - 1 - b, call.kw - 1 - l, call.kw - 1 - r)
            if min(pads) >= 0 and pads[0] == pads[1] and pads[2] == pads[3]:
                gi = F.conv2d(grad_out, turned, None, 1, (pads[0], pads[2]), 1, groups=call.c)
            else:  # the full correlation, cropped to the input
                gp = F.pad(grad_out, (call.kw - 1, call.kw - 1, call.kh - 1, call.kh - 1))
                gi = F.conv2d(gp, turned, groups=call.c)[:, :, t:t + call.h, l:l + call.w]
            return gi.contiguous(memory_format=_format(grad_out))
        # The input's values do not enter the input gradient; only its shape does.
        # In grad_out's memory format: a layout mismatch sends oneDNN down a path ~20x slower plus two copies.
        dummy = torch.empty((call.n, call.c, call.h, call.w), dtype=grad_out.dtype, device=grad_out.device,
                            memory_format=_format(grad_out))
        gi, _ = self._conv_backward(grad_out, dummy, weight, call, [True, False, False])
        if not _symmetric(call):
            t, _, l, _ = call.padding
            gi = gi[:, :, t:t + call.h, l:l + call.w]
        return gi.contiguous(memory_format=_format(grad_out))

    def weight_grad_follows_nonfinite_rule(self, call):
        # aten.convolution_backward on the CPU forms only real products for 3x3 filters in both layouts (its NCHW
        # weight gradient multiplies padding from 5x5 up); the explicitly padded paths (asymmetric padding, a
        # filter larger than the map) multiply zeros. Held by tests/test_dropin.py's non-finite rule test.
        return (call.device.type == "cpu" and call.unit_stride_dilation and _symmetric(call)
                and max(call.kh, call.kw) <= 3 and not _filter_exceeds_map(call))

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
