"""The functional API: `depthwise_conv2d` and its PyTorch reference."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from . import autograd, dispatch, ops
from .backends import Backend, BackendNotSupportedError
from .geometry import ConvCall, IntPair, Padding, UnplannableCall, plan


def depthwise_conv2d_reference(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                               stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1) -> torch.Tensor:
    """`F.conv2d(..., groups=C)`: what `depthwise_conv2d` must equal."""
    groups = input.shape[-3] if isinstance(input, torch.Tensor) and input.dim() >= 3 else 1
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def _eager_cpu_inference(x, weight, bias) -> bool:
    """A CPU call that needs neither autograd, a traced op (compile, export, jit/ONNX tracing) nor a dispatch
    mode's view of it."""
    return (x.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not autograd.needs_function(x, weight, bias) and _current_dispatch_mode() is None)


#: (argument signature) -> (ConvCall, backend) of unforced eager CPU calls. Planning and selecting cost ~6 us of
#: Python per call, 4% of a 3x3 layer on a 56x56 map, and depend on nothing but the signature on the CPU (the
#: CPU backends' refusals are a function of the call). Cleared when full: models have a few dozen signatures.
_CPU_PLANS: Dict[tuple, Tuple[ConvCall, Backend]] = {}
_CPU_PLANS_MAX = 1024


def _exact(value) -> Optional[Union[int, str, tuple]]:
    """A geometry argument as a cache key, or None where plain equality could conflate calls that `plan` treats
    differently (True == 1, 1.0 == 1) or the value is not hashable."""
    if type(value) in (int, str):
        return value
    if type(value) in (tuple, list) and all(type(v) is int for v in value):
        return tuple(value)
    return None


def _cpu_inference_plan(x, weight, bias, stride, padding, dilation) -> Tuple[ConvCall, Backend]:
    """`plan` and `dispatch.select` of an unforced eager CPU call, remembered per signature."""
    geometry = (_exact(stride), _exact(padding), _exact(dilation))
    key = None
    if None not in geometry:
        key = (x.shape, x.stride(), x.dtype, weight.shape, weight.dtype, weight.device, geometry,
               None if bias is None else (bias.shape, bias.dtype, bias.device))
        hit = _CPU_PLANS.get(key)
        if hit is not None:
            return hit
    call = plan(x, weight, bias, stride, padding, dilation)
    planned = (call, dispatch.select(call))
    if key is not None:
        if len(_CPU_PLANS) >= _CPU_PLANS_MAX:
            _CPU_PLANS.clear()
        _CPU_PLANS[key] = planned
    return planned


def _run_inference(backend: Backend, call: ConvCall, x, weight, bias) -> torch.Tensor:
    """The backend's forward without the custom op's dispatch (~0.05-0.1 ms of Python, a third of a 7x7 layer's
    time), so that installing lkconv never slows a small layer down: the same backend and the same non-finite
    rule as the op (on the CPU PyTorch's forward already follows the rule)."""
    if backend.name == "torch":
        return backend.forward(x, weight, bias, call)
    return ops.run_fwd(backend, call, x, weight, bias)


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
    # Unforced eager CPU inference: planned and selected once per signature (see _CPU_PLANS).
    fast = (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
            and (bias is None or isinstance(bias, torch.Tensor)) and _eager_cpu_inference(x, weight, bias)
            and dispatch.forced_backend() is None)
    try:
        if fast:
            call, backend = _cpu_inference_plan(x, weight, bias, stride, padding, dilation)
        else:
            call = plan(x, weight, bias, stride, padding, dilation)
    except UnplannableCall as exc:
        out = depthwise_conv2d_reference(input, weight, bias, stride, padding, dilation)  # raises if malformed
        forced = dispatch.forced_backend()
        if forced not in (None, "torch"):
            raise BackendNotSupportedError(forced, [str(exc)]) from None
        return out

    if fast:
        out = _run_inference(backend, call, x, weight, bias)
    elif torch.onnx.is_in_onnx_export():
        # ONNX has a standard grouped Conv; the exporter writes F.conv2d as that (the custom op has no ONNX form).
        out = depthwise_conv2d_reference(x, weight, bias, stride, padding, dilation)
    elif _eager_cpu_inference(x, weight, bias):  # with a forced backend
        out = _run_inference(dispatch.select(call), call, x, weight, bias)
    else:
        out = autograd.depthwise_conv2d(x, weight, bias, list(call.padding), list(call.stride),
                                        list(call.dilation))
    return out.squeeze(0) if unbatched else out
