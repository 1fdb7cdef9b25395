"""The functional API: `depthwise_conv2d` and its PyTorch reference."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from . import autograd, dispatch, nonfinite
from .backends import BackendNotSupportedError
from .geometry import IntPair, Padding, UnplannableCall, plan


def depthwise_conv2d_reference(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                               stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1) -> torch.Tensor:
    """`F.conv2d(..., groups=C)`: what `depthwise_conv2d` must equal."""
    groups = input.shape[-3] if isinstance(input, torch.Tensor) and input.dim() >= 3 else 1
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def _eager_cpu_inference(x, weight, bias) -> bool:
    """A CPU call that needs neither autograd, a traced op (compile, export) nor a dispatch mode's view of it."""
    return (x.device.type == "cpu" and not torch.compiler.is_compiling()
            and not autograd.needs_function(x, weight, bias) and _current_dispatch_mode() is None)


def depthwise_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1) -> torch.Tensor:
    """Depthwise 2-D convolution: exactly `F.conv2d(input, weight, bias, stride, padding, dilation, groups=C)`.

    Args:
        input: (N, C, H, W) or unbatched (C, H, W); any strides (NCHW, channels_last, views).
        weight: (C, 1, kh, kw), any kernel shape (odd, even, non-square, larger than the input).
        bias: (C,) or None.
        stride, dilation: int or (h, w).
        padding: int, (h, w), 'same' (PyTorch's rule: even kernels pad one more at the bottom/right) or 'valid'.

    Returns:
        (N, C, H_out, W_out) in the input's memory format, with
        H_out = (H + pad_top + pad_bottom - dilation_h * (kh - 1) - 1) // stride_h + 1 (likewise W_out).

    Differentiable in input, weight and bias. Runs on the fastest backend that supports the call (see
    `lkconv.explain`); calls no fast backend covers, and malformed calls, go to F.conv2d, which computes them or
    raises its own error.
    """
    unbatched = isinstance(input, torch.Tensor) and input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    if (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
            and torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type)
            and x.is_floating_point() and x.dtype != torch.float64):
        # Follow F.conv2d under autocast: floating operands other than float64 run in the autocast dtype.
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if isinstance(bias, torch.Tensor) else bias
    try:
        call = plan(x, weight, bias, stride, padding, dilation)
    except UnplannableCall as exc:
        out = depthwise_conv2d_reference(input, weight, bias, stride, padding, dilation)  # raises if malformed
        forced = dispatch.forced_backend()
        if forced not in (None, "torch"):
            raise BackendNotSupportedError(forced, [str(exc)]) from None
        return out

    if torch.onnx.is_in_onnx_export():
        # ONNX has a standard grouped Conv; the exporter writes F.conv2d as that (the custom op has no ONNX form).
        out = depthwise_conv2d_reference(x, weight, bias, stride, padding, dilation)
    elif _eager_cpu_inference(x, weight, bias):
        # Nothing needs gradients or a traced op: run the chosen backend without the custom op's dispatch
        # (~0.05-0.1 ms of Python, a third of a 7x7 layer's time), so that installing lkconv never slows a small
        # layer down. The same backend and the same non-finite rule as the op (on the CPU PyTorch's forward
        # already follows the rule).
        backend = dispatch.select(call)
        if backend.name == "torch":
            out = backend.forward(x, weight, bias, call)
        else:
            out = nonfinite.forward(lambda xx, ww, bb: backend.forward(xx, ww, bb, call), x, weight, bias,
                                    list(call.padding), list(call.stride), list(call.dilation))
    else:
        out = autograd.depthwise_conv2d(x, weight, bias, list(call.padding), list(call.stride),
                                        list(call.dilation))
    return out.squeeze(0) if unbatched else out
