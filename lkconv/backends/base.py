"""The backend interface.

A backend runs the three passes of a stride-1 or strided depthwise conv given a ConvCall. It declares
`unavailable()` (why it cannot run at all on this machine/build, or None) and `refusals(call)` (why it cannot
run this call). `auto_refusals(call)` lists reasons not to pick it unforced although it could run the call
(e.g. the Triton interpreter on CPU, or a faster backend being measured for that shape).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..geometry import ConvCall


class BackendNotSupportedError(RuntimeError):
    """A forced backend cannot run a call (lkconv never falls back silently while a backend is forced)."""

    def __init__(self, backend: str, reasons: List[str]):
        self.backend = backend
        self.reasons = list(reasons)
        super().__init__(f"lkconv backend {backend!r} cannot run this call: " + "; ".join(self.reasons))


class Backend:
    name: str = "?"

    def unavailable(self) -> Optional[str]:
        return None

    def refusals(self, call: ConvCall) -> List[str]:
        return []

    def auto_refusals(self, call: ConvCall) -> List[str]:
        return []

    def reasons(self, call: ConvCall, forced: bool = False) -> List[str]:
        why = self.unavailable()
        if why:
            return [why]
        out = self.refusals(call)
        if not forced:
            out = out + self.auto_refusals(call)
        return out

    def weight_grad_follows_nonfinite_rule(self, call: ConvCall) -> bool:
        """Whether this backend's weight gradient of `call` already multiplies no padding, so that a non-finite
        output gradient reaches exactly the taps the rule says (lkconv/nonfinite.py) without the op layer's
        check and fix-up (a pass over the output gradient: 0.04 ms of a 0.18 ms 3x3 weight gradient at 56x56)."""
        return False

    # The passes. `call` is the forward geometry; tensors are as the op received them (any strides).
    def forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                call: ConvCall) -> torch.Tensor:
        raise NotImplementedError

    def backward_input(self, grad_out: torch.Tensor, weight: torch.Tensor, call: ConvCall) -> torch.Tensor:
        raise NotImplementedError

    def backward_weight(self, grad_out: torch.Tensor, input: torch.Tensor, call: ConvCall) -> torch.Tensor:
        raise NotImplementedError


def common_refusals(call: ConvCall, devices, dtypes, max_kernel: Optional[int] = None,
                    unit_stride_only: bool = True) -> List[str]:
    """Refusal reasons shared by the fast backends."""
    out = []
    if call.device.type not in devices:
        out.append(f"runs on {'/'.join(devices)} tensors, not {call.device.type}")
    if call.dtype not in dtypes:
        out.append(f"dtype {call.dtype} not supported (supports {', '.join(str(d) for d in dtypes)})")
    if unit_stride_only and call.stride != (1, 1):
        out.append(f"stride {call.stride} not supported (stride 1 only)")
    if unit_stride_only and call.dilation != (1, 1):
        out.append(f"dilation {call.dilation} not supported (dilation 1 only)")
    if max_kernel is not None and max(call.kh, call.kw) > max_kernel:
        out.append(f"kernel {call.kh}x{call.kw} larger than {max_kernel}x{max_kernel}")
    return out
