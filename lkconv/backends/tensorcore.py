"""The tensor-core kernels (lkconv/tensorcore_kernels.py, Triton `tl.dot`): float16/bfloat16, and float32 as TF32
when the user opts in. CUDA devices, or CPU tensors under TRITON_INTERPRET=1 (tests)."""

from __future__ import annotations

import torch

from .base import common_refusals
from .triton_backend import TritonBackend, _interpreting

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TF32_OPT_IN = ("float32 runs on tensor cores only as TF32, which the user opts in to as for matmuls: "
               "torch.set_float32_matmul_precision('high') (with torch.backends.cudnn.allow_tf32 left True)")


class TensorCoreBackend(TritonBackend):
    name = "tensorcore"
    kernel_module = "tensorcore_kernels"

    def _launcher(self, call):
        return self._load(), {}

    def refusals(self, call):
        devices = ("cuda", "cpu") if _interpreting() else ("cuda",)
        kernels = self._load()
        out = common_refusals(call, devices, DTYPES, kernels.MAX_KERNEL if kernels else None)
        if call.dtype == torch.float32 and kernels and not kernels.tf32_allowed():
            out.append(TF32_OPT_IN)
        if kernels:
            out += kernels.gemm_refusals(call)
        if call.device.type == "cuda" and torch.cuda.is_available():
            major, _ = torch.cuda.get_device_capability(call.device)
            if major < 8:
                out.append("needs a GPU with bf16/tf32 tensor cores (compute capability 8.0 or newer)")
        return out
