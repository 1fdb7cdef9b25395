"""The Triton kernels (lkconv/triton_kernels): CUDA devices, or CPU tensors under TRITON_INTERPRET=1 (tests)."""

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

    def forward(self, input, weight, bias, call):
        return self._load().forward(input, weight, bias, call)

    def backward_input(self, grad_out, weight, call):
        return self._load().backward_input(grad_out, weight, call)

    def backward_weight(self, grad_out, input, call):
        return self._load().backward_weight(grad_out, input, call)
