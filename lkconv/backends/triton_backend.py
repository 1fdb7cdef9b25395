"""The CUDA-core Triton kernels: CUDA devices, or CPU tensors under TRITON_INTERPRET=1 (tests).

NCHW calls run the Toeplitz/Hankel GEMMs of lkconv/tensorcore_kernels.py with fp32 operands and IEEE products,
which Triton lowers to FMAs on the CUDA cores: `tl.dot` stages the operands in shared memory and reuses each one
from registers across a per-thread block of outputs, which a direct Triton kernel cannot (it has no register
shifts, so every tap is a load). Predicted 3.5-33x the direct kernels' useful FLOP/s (`python -m bench.sass`).
channels_last calls (rows C elements apart: no vector loads) and the calls the GEMM launchers cannot index run the
direct kernels of lkconv/triton_kernels.py."""

from __future__ import annotations

import importlib
import os

import torch

from .base import Backend, common_refusals

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class TritonBackend(Backend):
    name = "triton"

    def __init__(self):
        self._import_error = None
        self._kernels = None

    kernel_module = "triton_kernels"  # the module of lkconv holding the kernels and their launchers

    def _load(self):
        if self._kernels is None and self._import_error is None:
            try:
                self._kernels = importlib.import_module(f"lkconv.{self.kernel_module}")
            except ImportError as exc:
                self._import_error = f"triton is not importable ({exc})"
        return self._kernels

    def unavailable(self):
        if self._load() is None:
            return self._import_error
        if not (torch.cuda.is_available() or _interpreting()):
            return "no CUDA device is visible (CPU tensors need TRITON_INTERPRET=1, for testing)"
        return None

    def refusals(self, call):
        devices = ("cuda", "cpu") if _interpreting() else ("cuda",)
        return common_refusals(call, devices, DTYPES, self._load().MAX_KERNEL if self._load() else None)

    def auto_refusals(self, call):
        if call.device.type == "cpu":
            return ["the Triton interpreter is for testing; the C++ kernels run CPU tensors"]
        return []

    def _launcher(self, call):
        """(kernel module, its launchers' keyword arguments) for this call."""
        gemm = importlib.import_module("lkconv.tensorcore_kernels")
        if not call.channels_last and not gemm.gemm_refusals(call):
            return gemm, {"cuda_cores": True}
        return self._load(), {}

    def forward(self, input, weight, bias, call):
        module, kwargs = self._launcher(call)
        return module.forward(input, weight, bias, call, **kwargs)

    def backward_input(self, grad_out, weight, call):
        module, kwargs = self._launcher(call)
        return module.backward_input(grad_out, weight, call, **kwargs)

    def backward_weight(self, grad_out, input, call):
        module, kwargs = self._launcher(call)
        return module.backward_weight(grad_out, input, call, **kwargs)
