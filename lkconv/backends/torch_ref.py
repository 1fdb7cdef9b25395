"""The reference backend: PyTorch's own convolution. Runs every call; the fallback and the test oracle."""

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
        # The input's values do not enter the input gradient; only its shape does.
        dummy = grad_out.new_empty((call.n, call.c, call.h, call.w))
        gi, _ = self._conv_backward(grad_out, dummy, weight, call, [True, False, False])
        if not _symmetric(call):
            t, _, l, _ = call.padding
            gi = gi[:, :, t:t + call.h, l:l + call.w]
        return gi.contiguous(memory_format=_format(grad_out))

    def backward_weight(self, grad_out, input, call):
        _, gw = self._conv_backward(grad_out, input, grad_out.new_empty((call.c, 1, call.kh, call.kw)), call,
                                    [False, True, False])
        return gw.contiguous()


def _format(t: torch.Tensor) -> torch.memory_format:
    return memory_format_of(t)
