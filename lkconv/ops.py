"""The `lkconv::` custom ops: forward, backward-input, backward-weight, with fake implementations (for
torch.compile and meta tensors), vmap batching rules, and autograd (see `autograd.py`, whose Functions the
public API uses). Backend choice happens inside the ops, at run time, so eager and compiled code run the same
kernels and `use_backend` works in both. The non-finite rule of `nonfinite.py` is applied here, once, for
every backend.

Padding is (top, bottom, left, right); stride and dilation are pairs. Tensors may have any strides.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from . import dispatch, nonfinite
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
    return run_fwd(dispatch.select(call), call, input, weight, bias)


def run_fwd(backend, call: ConvCall, input: torch.Tensor, weight: torch.Tensor,
            bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The forward op's body once the backend is chosen: the backend under the non-finite rule (also called
    directly by eager CPU inference, see functional.py)."""
    return nonfinite.forward(lambda x, w, b: backend.forward(x, w, b, call), input, weight, bias,
                             list(call.padding), list(call.stride), list(call.dilation))


@depthwise_conv2d_fwd.register_fake
def _(input, weight, bias, padding, stride, dilation):
    n, c, h, w = input.shape
    oh, ow = _out_hw(h, w, weight.shape[2], weight.shape[3], padding, stride, dilation)
    return _empty((n, c, oh, ow), input, input)


# ---- backward-input --------------------------------------------------------------------------------------
@torch.library.custom_op("lkconv::depthwise_conv2d_bwd_input", mutates_args=())
def depthwise_conv2d_bwd_input(grad_out: torch.Tensor, weight: torch.Tensor, input_hw: List[int],
                               padding: List[int], stride: List[int], dilation: List[int]) -> torch.Tensor:
    return run_bwd_input(grad_out, weight, input_hw, padding, stride, dilation)


def run_bwd_input(grad_out: torch.Tensor, weight: torch.Tensor, input_hw: List[int], padding: List[int],
                  stride: List[int], dilation: List[int]) -> torch.Tensor:
    """The backward-input op's body: the chosen backend under the non-finite rule (also called directly by the
    eager backward, see autograd.py)."""
    n, c = grad_out.shape[:2]
    call = _call((n, c, input_hw[0], input_hw[1]), weight.shape[2:], padding, stride, dilation, grad_out.device,
                 grad_out.dtype, is_channels_last(grad_out), "backward_input")
    backend = dispatch.select(call)
    return nonfinite.backward_input(lambda g, w: backend.backward_input(g, w, call), grad_out, weight, input_hw,
                                    padding, stride, dilation)


@depthwise_conv2d_bwd_input.register_fake
def _(grad_out, weight, input_hw, padding, stride, dilation):
    return _empty((grad_out.shape[0], grad_out.shape[1], input_hw[0], input_hw[1]), grad_out, grad_out)


# ---- backward-weight -------------------------------------------------------------------------------------
@torch.library.custom_op("lkconv::depthwise_conv2d_bwd_weight", mutates_args=())
def depthwise_conv2d_bwd_weight(grad_out: torch.Tensor, input: torch.Tensor, kernel_hw: List[int],
                                padding: List[int], stride: List[int], dilation: List[int]) -> torch.Tensor:
    return run_bwd_weight(grad_out, input, kernel_hw, padding, stride, dilation)


def run_bwd_weight(grad_out: torch.Tensor, input: torch.Tensor, kernel_hw: List[int], padding: List[int],
                   stride: List[int], dilation: List[int]) -> torch.Tensor:
    """The backward-weight op's body (also called directly by the eager backward, see autograd.py)."""
    call = _call(input.shape, kernel_hw, padding, stride, dilation, input.device, input.dtype,
                 is_channels_last(input), "backward_weight")
    backend = dispatch.select(call)
    if backend.weight_grad_follows_nonfinite_rule(call):
        return backend.backward_weight(grad_out, input, call)
    return nonfinite.backward_weight(lambda g, x: backend.backward_weight(g, x, call), grad_out, input, kernel_hw,
                                     padding, stride, dilation)


@depthwise_conv2d_bwd_weight.register_fake
def _(grad_out, input, kernel_hw, padding, stride, dilation):
    return input.new_empty((input.shape[1], 1, kernel_hw[0], kernel_hw[1]))


# ---- vmap ------------------------------------------------------------------------------------------------
# A vmapped batch dimension of the activations joins the batch (N); one of the weight (or of both operands of
# the weight gradient) joins the channels, so every rule is one call of the op on a larger tensor.
def _moved(t: Optional[torch.Tensor], dim: Optional[int], size: int) -> Optional[torch.Tensor]:
    """t with its vmapped dimension first (expanded to `size` when t is not batched)."""
    if t is None:
        return None
    if dim is None:
        return t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(dim, 0)


def _into_channels(t: torch.Tensor) -> torch.Tensor:
    """(B, N, C, H, W) -> (N, B*C, H, W)."""
    b, n, c = t.shape[:3]
    return t.transpose(0, 1).reshape(n, b * c, *t.shape[3:])


def _from_channels(t: torch.Tensor, b: int) -> torch.Tensor:
    """(N, B*C, H, W) -> (N, B, C, H, W)."""
    return t.unflatten(1, (b, -1))


@depthwise_conv2d_fwd.register_vmap
def _(info, in_dims, input, weight, bias, padding, stride, dilation):
    b = info.batch_size
    x_dim, w_dim, b_dim = in_dims[:3]
    if w_dim is None and b_dim is None:
        out = depthwise_conv2d_fwd(_moved(input, x_dim, b).flatten(0, 1), weight, bias, padding, stride, dilation)
        return out.unflatten(0, (b, -1)), 0
    x = _into_channels(_moved(input, x_dim, b))
    w = _moved(weight, w_dim, b).flatten(0, 1)
    bias_ = _moved(bias, b_dim, b).flatten(0, 1) if bias is not None else None
    return _from_channels(depthwise_conv2d_fwd(x, w, bias_, padding, stride, dilation), b), 1


@depthwise_conv2d_bwd_input.register_vmap
def _(info, in_dims, grad_out, weight, input_hw, padding, stride, dilation):
    b = info.batch_size
    g_dim, w_dim = in_dims[:2]
    if w_dim is None:
        g = _moved(grad_out, g_dim, b)
        out = depthwise_conv2d_bwd_input(g.flatten(0, 1), weight, input_hw, padding, stride, dilation)
        return out.unflatten(0, (b, -1)), 0
    g = _into_channels(_moved(grad_out, g_dim, b))
    w = _moved(weight, w_dim, b).flatten(0, 1)
    return _from_channels(depthwise_conv2d_bwd_input(g, w, input_hw, padding, stride, dilation), b), 1


@depthwise_conv2d_bwd_weight.register_vmap
def _(info, in_dims, grad_out, input, kernel_hw, padding, stride, dilation):
    b = info.batch_size
    g = _into_channels(_moved(grad_out, in_dims[0], b))
    x = _into_channels(_moved(input, in_dims[1], b))
    out = depthwise_conv2d_bwd_weight(g, x, kernel_hw, padding, stride, dilation)
    return out.unflatten(0, (b, -1)), 0
