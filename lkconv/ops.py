"""The `lkconv::` custom ops: forward, backward-input, backward-weight, with fake implementations (for
torch.compile and meta tensors) and autograd. Backend choice happens inside the ops, at run time, so eager
and compiled code run the same kernels and `use_backend` works in both.

Padding is (top, bottom, left, right); stride and dilation are pairs. Tensors may have any strides.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from . import dispatch
from .geometry import ConvCall, is_channels_last, memory_format_of, output_size


def _call(x_shape, kernel, padding, stride, dilation, device, dtype, channels_last, pass_name) -> ConvCall:
    n, c, h, w = x_shape
    return ConvCall(n, c, h, w, kernel[0], kernel[1], tuple(padding), tuple(stride), tuple(dilation), device,
                    dtype, channels_last, pass_name)


def _empty(shape, like: torch.Tensor, fmt_of: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format_of(fmt_of))


def _out_hw(h, w, kh, kw, padding, stride, dilation):
    return (output_size(h, kh, padding[0], padding[1], stride[0], dilation[0]),
            output_size(w, kw, padding[2], padding[3], stride[1], dilation[1]))


# ---- forward ---------------------------------------------------------------------------------------------
@torch.library.custom_op("lkconv::depthwise_conv2d_fwd", mutates_args=())
def depthwise_conv2d_fwd(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         padding: List[int], stride: List[int], dilation: List[int]) -> torch.Tensor:
    call = _call(input.shape, weight.shape[2:], padding, stride, dilation, input.device, input.dtype,
                 is_channels_last(input), "forward")
    return dispatch.select(call).forward(input, weight, bias, call)


@depthwise_conv2d_fwd.register_fake
def _(input, weight, bias, padding, stride, dilation):
    n, c, h, w = input.shape
    oh, ow = _out_hw(h, w, weight.shape[2], weight.shape[3], padding, stride, dilation)
    return _empty((n, c, oh, ow), input, input)


# ---- backward-input --------------------------------------------------------------------------------------
@torch.library.custom_op("lkconv::depthwise_conv2d_bwd_input", mutates_args=())
def depthwise_conv2d_bwd_input(grad_out: torch.Tensor, weight: torch.Tensor, input_hw: List[int],
                               padding: List[int], stride: List[int], dilation: List[int]) -> torch.Tensor:
    n, c = grad_out.shape[:2]
    call = _call((n, c, input_hw[0], input_hw[1]), weight.shape[2:], padding, stride, dilation, grad_out.device,
                 grad_out.dtype, is_channels_last(grad_out), "backward_input")
    return dispatch.select(call).backward_input(grad_out, weight, call)


@depthwise_conv2d_bwd_input.register_fake
def _(grad_out, weight, input_hw, padding, stride, dilation):
    return _empty((grad_out.shape[0], grad_out.shape[1], input_hw[0], input_hw[1]), grad_out, grad_out)


# ---- backward-weight -------------------------------------------------------------------------------------
@torch.library.custom_op("lkconv::depthwise_conv2d_bwd_weight", mutates_args=())
def depthwise_conv2d_bwd_weight(grad_out: torch.Tensor, input: torch.Tensor, kernel_hw: List[int],
                                padding: List[int], stride: List[int], dilation: List[int]) -> torch.Tensor:
    call = _call(input.shape, kernel_hw, padding, stride, dilation, input.device, input.dtype,
                 is_channels_last(input), "backward_weight")
    return dispatch.select(call).backward_weight(grad_out, input, call)


@depthwise_conv2d_bwd_weight.register_fake
def _(grad_out, input, kernel_hw, padding, stride, dilation):
    return input.new_empty((input.shape[1], 1, kernel_hw[0], kernel_hw[1]))


# ---- autograd --------------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    input, weight, bias, padding, stride, dilation = inputs
    ctx.geometry = (list(padding), list(stride), list(dilation))
    ctx.input_hw = list(input.shape[2:])
    ctx.kernel_hw = list(weight.shape[2:])
    ctx.has_bias = bias is not None
    # Each gradient needs only the other operand: save what the requested gradients use.
    ctx.save_for_backward(input if weight.requires_grad else None, weight if input.requires_grad else None)


def _backward(ctx, grad_out):
    input, weight = ctx.saved_tensors
    padding, stride, dilation = ctx.geometry
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = depthwise_conv2d_bwd_input(grad_out, weight, ctx.input_hw, padding, stride, dilation)
    if ctx.needs_input_grad[1]:
        grad_weight = depthwise_conv2d_bwd_weight(grad_out, input, ctx.kernel_hw, padding, stride, dilation)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad_out.sum(dim=(0, 2, 3))
    return grad_input, grad_weight, grad_bias, None, None, None


torch.library.register_autograd("lkconv::depthwise_conv2d_fwd", _backward, setup_context=_setup_context)
