"""The CUDA kernels (csrc/cuda): compiled into lkconv._C when nvcc was present at build time, and the same kernels
under the CUDA execution-model emulation (`cuda_emu`, CPU tensors, for tests; see lkconv.cuda_emulation)."""

from __future__ import annotations

import torch

from .. import _ext
from .base import Backend, common_refusals

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_KERNEL = 127  # the kernels keep one filter row per thread block in shared memory


class CudaBackend(Backend):
    name = "cuda"
    device_type = "cuda"

    def module(self):
        return _ext._C

    def unavailable(self):
        if _ext.LOAD_ERROR:
            return _ext.LOAD_ERROR
        if not _ext.with_cuda():
            return "lkconv._C was built without CUDA kernels (no nvcc or a CPU build of torch at build time)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None

    def refusals(self, call):
        out = common_refusals(call, (self.device_type,), DTYPES, MAX_KERNEL)
        if not out:
            # The launchers' own tile choice for this batch, evaluated without launching: a call whose tiles do
            # not fit this GPU's shared memory is refused here (so the dispatcher picks another backend), not
            # mid-call.
            config = self.module().cuda_tile_config(call.pass_name, call.h, call.w, call.kh, call.kw,
                                                    list(call.padding), call.channels_last,
                                                    2 if call.dtype.itemsize == 2 else 4, min(call.n, (1 << 30) - 1))
            if config["refusal"]:
                out.append(config["refusal"])
        return out

    def forward(self, input, weight, bias, call):
        return self.module().cuda_forward(input, weight, bias, list(call.padding), call.channels_last)

    def backward_input(self, grad_out, weight, call):
        return self.module().cuda_backward_input(grad_out, weight, call.h, call.w, list(call.padding),
                                                 call.channels_last)

    def backward_weight(self, grad_out, input, call):
        return self.module().cuda_backward_weight(grad_out, input, call.kh, call.kw, list(call.padding),
                                                  torch.are_deterministic_algorithms_enabled())


class CudaEmulationBackend(CudaBackend):
    """The CUDA kernels on CPU tensors, through the emulation module that `lkconv.cuda_emulation.load()` builds."""

    name = "cuda_emu"
    device_type = "cpu"

    def __init__(self):
        self._module = None

    def module(self):
        return self._module

    def attach(self, module) -> None:
        """Run on `module` (a build of lkconv.cuda_emulation)."""
        self._module = module

    def unavailable(self):
        if self._module is None:
            return "the CUDA emulation is not loaded (lkconv.cuda_emulation.load(); it is a testing tool)"
        return None

    def auto_refusals(self, call):
        return ["the CUDA emulation runs the CUDA kernels on the CPU for testing; it runs only when forced"]

