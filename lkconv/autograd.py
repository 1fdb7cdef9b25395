"""Autograd of the depthwise convolution: one `autograd.Function` per op, each differentiable again.

The three ops are bilinear, and each one's derivatives are the other ops:

    y  = F(x, w)     = conv(x, w)          dF  = F(dx, w) + F(x, dw)
    gx = I(gy, w)    = adjoint of F in x    dI  = I(dgy, w) + I(gy, dw)      I's adjoints: F(ggx, w), W(gy, ggx)
    gw = W(gy, x)    = adjoint of F in w    dW  = W(dgy, x) + W(gy, dx)      W's adjoints: F(x, ggw), I(gy, ggw)

so reverse mode to any order (double backward, Hessians), forward mode (`jvp`) and their mixtures all run on
the same kernels. The Functions use `setup_context` and `generate_vmap_rule`, so `torch.func` transforms
(grad, jacrev, jacfwd, hessian, vmap) compose with them; vmap reaches the ops' batching rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from . import ops


@dataclass(frozen=True)
class Geometry:
    """padding (top, bottom, left, right), stride, dilation: one opaque argument of the Functions (functorch's
    generated vmap rules treat list arguments as pytrees of tangent slots)."""

    padding: Tuple[int, int, int, int]
    stride: Tuple[int, int]
    dilation: Tuple[int, int]

    def args(self):
        return list(self.padding), list(self.stride), list(self.dilation)


def _add(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if a is None:
        return b
    return a if b is None else a + b


def _save_operands(ctx, a: torch.Tensor, b: torch.Tensor, geometry: "Geometry") -> None:
    """The operands of a bilinear op f(a, b): each one's gradient needs only the other, the tangent both."""
    ctx.geometry = geometry
    ctx.save_for_backward(a if b.requires_grad else None, b if a.requires_grad else None)
    ctx.save_for_forward(a, b)


def _bilinear_jvp(f, ctx, da: Optional[torch.Tensor], db: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """d f(a, b) = f(da, b) + f(a, db) for f bilinear in the saved operands (a, b)."""
    a, b = ctx.saved_tensors
    out = f(da, b) if da is not None else None
    return _add(out, f(a, db)) if db is not None else out


class DepthwiseConv2d(torch.autograd.Function):
    """y = conv(x, w) + b."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, geometry: Geometry):
        return ops.depthwise_conv2d_fwd(input, weight, bias, *geometry.args())

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, geometry = inputs
        ctx.input_hw = _Shape.of(input)
        ctx.kernel_hw = _Shape.of(weight)
        ctx.has_bias = bias is not None
        _save_operands(ctx, input, weight, geometry)

    @staticmethod
    def backward(ctx, grad_out):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        direct = _eager_first_order(grad_out, input, weight)
        if ctx.needs_input_grad[0]:
            if direct:
                grad_input = ops.run_bwd_input(grad_out, weight, list(ctx.input_hw.hw), *ctx.geometry.args())
            else:
                grad_input = DepthwiseConv2dBackwardInput.apply(grad_out, weight, ctx.input_hw, ctx.geometry)
        if ctx.needs_input_grad[1]:
            if direct:
                grad_weight = ops.run_bwd_weight(grad_out, input, list(ctx.kernel_hw.hw), *ctx.geometry.args())
            else:
                grad_weight = DepthwiseConv2dBackwardWeight.apply(grad_out, input, ctx.kernel_hw, ctx.geometry)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(dim=(0, 2, 3))
        return grad_input, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, d_input, d_weight, d_bias, *_):
        out = _bilinear_jvp(lambda x, w: DepthwiseConv2d.apply(x, w, None, ctx.geometry), ctx, d_input, d_weight)
        if d_bias is not None:
            input, weight = ctx.saved_tensors
            db = d_bias.view(1, -1, 1, 1)
            out = db.expand(input.shape[0], -1, *_out_hw(ctx, input, weight)) if out is None else out + db
        return out


def _eager_first_order(*tensors) -> bool:
    """Whether a backward may run the gradient ops' bodies directly, skipping their Functions and custom-op
    dispatch (~0.1 ms of Python per pass, half of a 3x3 layer's input gradient): a plain first-order backward
    (create_graph=False, no forward-mode level, no torch.func transform) of CPU tensors, with nothing compiling,
    tracing or watching the dispatch."""
    return (not torch.is_grad_enabled() and forward_ad._current_level < 0
            and torch._C._functorch.peek_interpreter_stack() is None and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and _current_dispatch_mode() is None
            and all(t is None or (type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu")
                    for t in tensors))


def _out_hw(ctx, input, weight):
    return ops._out_hw(input.shape[2], input.shape[3], weight.shape[2], weight.shape[3], *ctx.geometry.args())


@dataclass(frozen=True)
class _Shape:
    """(h, w) as one opaque argument (see Geometry)."""

    hw: Tuple[int, int]

    @staticmethod
    def of(t: torch.Tensor) -> "_Shape":
        return _Shape((int(t.shape[2]), int(t.shape[3])))


class DepthwiseConv2dBackwardInput(torch.autograd.Function):
    """gx = I(gy, w): the input gradient of conv(x, w) for output gradient gy."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, weight, input_hw: "_Shape", geometry: Geometry):
        return ops.depthwise_conv2d_bwd_input(grad_out, weight, list(input_hw.hw), *geometry.args())

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, weight, input_hw, geometry = inputs
        _save_operands(ctx, grad_out, weight, geometry)
        ctx.input_hw = input_hw
        ctx.kernel_hw = _Shape.of(weight)

    @staticmethod
    def backward(ctx, grad_grad_input):
        grad_out, weight = ctx.saved_tensors
        d_grad_out = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad_out = DepthwiseConv2d.apply(grad_grad_input, weight, None, ctx.geometry)
        if ctx.needs_input_grad[1]:
            d_weight = DepthwiseConv2dBackwardWeight.apply(grad_out, grad_grad_input, ctx.kernel_hw, ctx.geometry)
        return d_grad_out, d_weight, None, None

    @staticmethod
    def jvp(ctx, d_grad_out, d_weight, *_):
        return _bilinear_jvp(lambda g, w: DepthwiseConv2dBackwardInput.apply(g, w, ctx.input_hw, ctx.geometry), ctx,
                             d_grad_out, d_weight)


class DepthwiseConv2dBackwardWeight(torch.autograd.Function):
    """gw = W(gy, x): the weight gradient of conv(x, w) for output gradient gy."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, input, kernel_hw: "_Shape", geometry: Geometry):
        return ops.depthwise_conv2d_bwd_weight(grad_out, input, list(kernel_hw.hw), *geometry.args())

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, input, kernel_hw, geometry = inputs
        _save_operands(ctx, grad_out, input, geometry)
        ctx.input_hw = _Shape.of(input)
        ctx.kernel_hw = kernel_hw

    @staticmethod
    def backward(ctx, grad_grad_weight):
        grad_out, input = ctx.saved_tensors
        d_grad_out = d_input = None
        if ctx.needs_input_grad[0]:
            d_grad_out = DepthwiseConv2d.apply(input, grad_grad_weight, None, ctx.geometry)
        if ctx.needs_input_grad[1]:
            d_input = DepthwiseConv2dBackwardInput.apply(grad_out, grad_grad_weight, ctx.input_hw, ctx.geometry)
        return d_grad_out, d_input, None, None

    @staticmethod
    def jvp(ctx, d_grad_out, d_input, *_):
        return _bilinear_jvp(lambda g, x: DepthwiseConv2dBackwardWeight.apply(g, x, ctx.kernel_hw, ctx.geometry),
                             ctx, d_grad_out, d_input)


def depthwise_conv2d(input, weight, bias, padding: List[int], stride: List[int], dilation: List[int]):
    """The differentiable op (planned arguments: 4-D input, (top, bottom, left, right) padding).

    Under torch.compile the op is called directly (its registered autograd is what AOTAutograd traces; Dynamo
    cannot trace an autograd.Function with a custom jvp); in eager mode the Function, which also serves forward
    mode and torch.func."""
    if torch.compiler.is_compiling() or not needs_function(input, weight, bias):
        return ops.depthwise_conv2d_fwd(input, weight, bias, padding, stride, dilation)
    return DepthwiseConv2d.apply(input, weight, bias, Geometry(tuple(padding), tuple(stride), tuple(dilation)))


def needs_function(input, weight, bias) -> bool:
    """Whether a call needs the autograd.Function: something requires grad, a forward-mode dual level is open, or
    a torch.func transform is active. Plain inference calls the op (Function.apply binds its arguments through
    inspect.signature on every call: ~35 us, a fifth of a small layer's time)."""
    if torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return True
    return forward_ad._current_level >= 0 or torch._C._functorch.peek_interpreter_stack() is not None


# ---- the same derivatives for callers of the ops themselves (torch.ops.lkconv.*) ---------------------------
def _register_op_autograd():
    def geometry(padding, stride, dilation) -> Geometry:
        return Geometry(tuple(padding), tuple(stride), tuple(dilation))

    def fwd_setup(ctx, inputs, output):
        input, weight, bias, padding, stride, dilation = inputs
        DepthwiseConv2d.setup_context(ctx, (input, weight, bias, geometry(padding, stride, dilation)), output)

    def fwd_backward(ctx, grad_out):
        return DepthwiseConv2d.backward(ctx, grad_out)[:3] + (None, None, None)

    def bwd_input_setup(ctx, inputs, output):
        grad_out, weight, input_hw, padding, stride, dilation = inputs
        DepthwiseConv2dBackwardInput.setup_context(
            ctx, (grad_out, weight, _Shape(tuple(input_hw)), geometry(padding, stride, dilation)), output)

    def bwd_input_backward(ctx, grad):
        return DepthwiseConv2dBackwardInput.backward(ctx, grad)[:2] + (None, None, None, None)

    def bwd_weight_setup(ctx, inputs, output):
        grad_out, input, kernel_hw, padding, stride, dilation = inputs
        DepthwiseConv2dBackwardWeight.setup_context(
            ctx, (grad_out, input, _Shape(tuple(kernel_hw)), geometry(padding, stride, dilation)), output)

    def bwd_weight_backward(ctx, grad):
        return DepthwiseConv2dBackwardWeight.backward(ctx, grad)[:2] + (None, None, None, None)

    torch.library.register_autograd("lkconv::depthwise_conv2d_fwd", fwd_backward, setup_context=fwd_setup)
    torch.library.register_autograd("lkconv::depthwise_conv2d_bwd_input", bwd_input_backward,
                                    setup_context=bwd_input_setup)
    torch.library.register_autograd("lkconv::depthwise_conv2d_bwd_weight", bwd_weight_backward,
                                    setup_context=bwd_weight_setup)


_register_op_autograd()
