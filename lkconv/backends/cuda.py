"""The CUDA kernels (csrc/cuda), compiled into lkconv._C when nvcc was present at build time."""

from __future__ import annotations

import torch

from .. import _ext
from .base import Backend, common_refusals

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_KERNEL = 127  # the kernels keep one filter row per thread block in shared memory


class CudaBackend(Backend):
    name = "cuda"

    def unavailable(self):
        if _ext.LOAD_ERROR:
            return _ext.LOAD_ERROR
        if not _ext.with_cuda():
            return "lkconv._C was built without CUDA kernels (no nvcc or a CPU build of torch at build time)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None

    def refusals(self, call):
        return common_refusals(call, ("cuda",), DTYPES, MAX_KERNEL)

    def forward(self, input, weight, bias, call):
        return _ext._C.cuda_forward(input, weight, bias, list(call.padding), call.channels_last)

    def backward_input(self, grad_out, weight, call):
        return _ext._C.cuda_backward_input(grad_out, weight, call.h, call.w, list(call.padding), call.channels_last)

    def backward_weight(self, grad_out, input, call):
        return _ext._C.cuda_backward_weight(grad_out, input, call.kh, call.kw, list(call.padding),
                                            torch.are_deterministic_algorithms_enabled())
