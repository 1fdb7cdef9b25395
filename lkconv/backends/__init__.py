"""Backends of the depthwise op. Each declares what it supports and says why it refuses a call."""

from .base import Backend, BackendNotSupportedError
from .cpu import CpuBackend
from .cuda import CudaBackend, CudaEmulationBackend
from .tensorcore import TensorCoreBackend
from .torch_ref import TorchBackend
from .triton_backend import TritonBackend

BACKENDS = {b.name: b for b in (CudaBackend(), TensorCoreBackend(), TritonBackend(), CpuBackend(), TorchBackend(),
                                CudaEmulationBackend())}

__all__ = ["BACKENDS", "Backend", "BackendNotSupportedError"]
