"""Accuracy rule of the test suite: a backend's error against a float64 reference may be at most twice
PyTorch's own error at the same dtype, plus a tiny floor (flash-attention's rule)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = {torch.float32: 2**-23, torch.float64: 2**-52, torch.float16: 2**-10, torch.bfloat16: 2**-7}


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref).abs().max().item() if ref.numel() else 0.0


def assert_within_torch_error(ours: torch.Tensor, theirs: torch.Tensor, ref: torch.Tensor, what: str):
    """|ours - ref| <= 2 |theirs - ref| + floor, where theirs is PyTorch at our dtype, ref float64."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != {theirs.dtype}"
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    # The floor: a few ulps; for float64, whose reference is float64 too (PyTorch's own error is then often
    # exactly zero), 1e-12 relative.
    floor = (1e-12 if ours.dtype == torch.float64 else 4 * EPS[ours.dtype]) * scale
    e_ours, e_theirs = max_err(ours, ref), max_err(theirs, ref)
    assert e_ours <= 2 * e_theirs + floor, (
        f"{what}: error {e_ours:.3g} > 2 x PyTorch's {e_theirs:.3g} + {floor:.3g}")


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32's 10-bit mantissa (to nearest, ties away from zero, as the tensor cores' operand
    conversion): PyTorch at this precision is the reference error of a TF32 computation."""
    assert t.dtype == torch.float32
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).reshape(t.shape)


def rule_oracle(x, w, pads):
    """Depthwise conv in float64 where a product with padding does not exist (the documented rule)."""
    t, b, l, r = pads
    kh, kw = w.shape[2:]
    valid = F.pad(torch.ones(1, 1, *x.shape[2:], dtype=x.dtype), (l, r, t, b)).unfold(2, kh, 1).unfold(3, kw, 1)
    patches = F.pad(x, (l, r, t, b)).unfold(2, kh, 1).unfold(3, kw, 1)
    prods = torch.where(valid > 0, patches * w[:, 0][None, :, None, None], torch.zeros((), dtype=x.dtype))
    return prods.sum((-1, -2))


def unfold_conv(x, w, b, stride=1, padding=0, dilation=1):
    """Depthwise conv (stride/dilation 1) as explicit patches and a sum: slow, but made of plain indexing and
    reductions, so its autograd is robust where PyTorch's conv backward is not (torch 2.14's CPU backward
    crashed or returned NaN here for a 51x5 filter taller than a 16x13 map). The float64 oracle."""
    assert stride in (1, (1, 1)) and dilation in (1, (1, 1))
    from lkconv.geometry import resolve_padding

    kh, kw = w.shape[2:]
    t, bo, l, r = resolve_padding(padding, (kh, kw), (1, 1), (1, 1))
    patches = F.pad(x, (l, r, t, bo)).unfold(2, kh, 1).unfold(3, kw, 1)  # N, C, OH, OW, kh, kw
    y = torch.einsum("nchwij,cij->nchw", patches, w[:, 0])
    return y if b is None else y + b.view(1, -1, 1, 1)


class _ConvByForwardPasses(torch.autograd.Function):
    """Depthwise conv whose gradients are computed with PyTorch's *forward* convolution (backward-input as
    the conv of the padded output gradient with the turned filter, backward-weight as a conv of the input with
    the output gradient as filter), i.e. with PyTorch's own arithmetic at the same dtype, avoiding its conv
    backward where that is unreliable."""

    @staticmethod
    def forward(ctx, x, w, b, pads):
        ctx.save_for_backward(x, w)
        ctx.pads = pads
        ctx.has_bias = b is not None
        t, bo, l, r = pads
        return F.conv2d(F.pad(x, (l, r, t, bo)), w, b, groups=x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        t, bo, l, r = ctx.pads
        n, c, h, wd = x.shape
        kh, kw = w.shape[2:]
        # grad_x[y] = sum_i g[y + t - i] w[i]: conv of g padded by (kh-1-t) with the turned filter, cropped.
        gp = F.pad(g, (kw - 1, kw - 1, kh - 1, kh - 1))
        full = F.conv2d(gp, w.flip(2, 3), groups=c)  # rows/cols -(kh-1-... ) aligned to the padded input
        gx = full[:, :, t:t + h, l:l + wd]
        # grad_w[c] = sum_n corr(pad(x)[n, c], g[n, c]): channels as groups, the batch as group members.
        xp = F.pad(x, (l, r, t, bo)).transpose(0, 1).reshape(1, c * n, *F.pad(x, (l, r, t, bo)).shape[2:])
        gw = F.conv2d(xp, g.transpose(0, 1), groups=c).transpose(0, 1)
        return gx, gw, g.sum((0, 2, 3)) if ctx.has_bias else None, None


def pytorch_conv(x, w, b, stride=1, padding=0, dilation=1):
    """F.conv2d; where its CPU backward is unreliable (filter larger than the map), the same arithmetic done
    with forward convolutions only."""
    if w.shape[2] > x.shape[2] or w.shape[3] > x.shape[3]:
        from lkconv.geometry import resolve_padding

        pads = resolve_padding(padding, tuple(w.shape[2:]), (1, 1), (1, 1))
        return _ConvByForwardPasses.apply(x, w, b, pads)
    return F.conv2d(x, w, b, stride, padding, dilation, groups=x.shape[-3])


def conv_with_grads(x, w, b, g, stride=1, padding=0, dilation=1, fn=None):
    """Output and gradients (input, weight, bias) of fn (default: pytorch_conv) for grad_output g."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = (fn or pytorch_conv)(x, w, b, stride, padding, dilation)
    y.backward(g)
    return y.detach(), x.grad, w.grad, (b.grad if b is not None else None)
