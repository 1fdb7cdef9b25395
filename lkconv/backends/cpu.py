"""The C++ CPU kernels (csrc/cpu): vectorised, multi-threaded, stride 1 and dilation 1."""

from __future__ import annotations

import torch

from .. import _ext
from .base import Backend, common_refusals

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class CpuBackend(Backend):
    name = "cpu"

    def unavailable(self):
        return _ext.LOAD_ERROR

    def refusals(self, call):
        return common_refusals(call, ("cpu",), DTYPES)

    def forward(self, input, weight, bias, call):
        return _ext._C.cpu_forward(input, weight, bias, list(call.padding), call.channels_last)

    def backward_input(self, grad_out, weight, call):
        # call.channels_last describes grad_out here (the op builds the call from it).
        return _ext._C.cpu_backward_input(grad_out, weight, call.h, call.w, list(call.padding), call.channels_last)

    def backward_weight(self, grad_out, input, call):
        return _ext._C.cpu_backward_weight(grad_out, input, call.kh, call.kw, list(call.padding))
