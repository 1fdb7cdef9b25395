"""Kernel attention distance (the paper's Fig. 9): how far from its centre each depthwise kernel puts its
weight, Σ|w|·‖position − centre‖ / Σ|w| in pixels (Euclidean), per channel, sorted per layer."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from .common import unwrap
from .lesion import residual_blocks


def kernel_attention_distance(weight: torch.Tensor) -> torch.Tensor:
    """(C,) distances of a depthwise weight (C, 1, kh, kw) or (C, kh, kw); the centre is ((kh−1)/2, (kw−1)/2)
    (between taps for even sizes). NaN for an all-zero kernel."""
    if weight.dim() == 4:
        if weight.shape[1] != 1:
            raise ValueError(f"a depthwise weight has shape (C, 1, kh, kw), got {tuple(weight.shape)}")
        weight = weight[:, 0]
    if weight.dim() != 3:
        raise ValueError(f"weight must be (C, 1, kh, kw) or (C, kh, kw), got {tuple(weight.shape)}")
    _, kh, kw = weight.shape
    y = torch.arange(kh, dtype=torch.float64) - (kh - 1) / 2
    x = torch.arange(kw, dtype=torch.float64) - (kw - 1) / 2
    dist = torch.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    mag = weight.detach().to("cpu", torch.float64).abs()
    total = mag.sum(dim=(1, 2))
    return ((mag * dist).sum(dim=(1, 2)) / total).float()


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.in_channels > 1


def _in_blocks(model: nn.Module):
    """(name, module) inside the residual blocks: the token mixers, not the stem's or transitions' convs."""
    prefixes = tuple(name + "." for name, _ in residual_blocks(model))
    return [(name, m) for name, m in model.named_modules() if name.startswith(prefixes)]


def _merged_kernels(model: nn.Module):
    """(name, weight) of every depthwise kernel of size > 1 in the residual blocks, RepLKNet's parallel large +
    small branches given as their merged (re-parameterised) kernel, read without changing the model."""
    from lkconv.models.replknet import ReparamLargeKernelConv

    inside_reparam = set()
    for name, m in _in_blocks(model):
        if isinstance(m, ReparamLargeKernelConv):
            inside_reparam.update(f"{name}.{sub}" for sub, _ in m.named_modules() if sub)
            if hasattr(m, "lkb_reparam"):
                yield name, m.lkb_reparam.weight
            else:
                with torch.no_grad():
                    yield name, m.get_equivalent_kernel_bias()[0]
        elif name not in inside_reparam and _is_depthwise(m) and max(m.kernel_size) > 1:
            yield name, m.weight


def _branch_kernels(model: nn.Module):
    for name, m in _in_blocks(model):
        if _is_depthwise(m) and max(m.kernel_size) > 1:
            yield name, m.weight


def model_kernel_attention(model: nn.Module, merged: bool = True) -> List[dict]:
    """Per depthwise layer of the residual blocks (depth order; stems and transitions left out): name, kernel size, the channels' distances sorted ascending and the
    normalised channel index 0..1 (Fig. 9's axes). merged=True reads RepLKNet's re-parameterised kernels
    (large + small + BN, what the network computes); merged=False reads every branch's own kernel."""
    model = unwrap(model)
    rows = []
    for name, weight in (_merged_kernels(model) if merged else _branch_kernels(model)):
        d = kernel_attention_distance(weight).sort().values
        c = d.numel()
        rows.append(dict(name=name, kernel_size=list(weight.shape[-2:]), distances=d.tolist(),
                         channel=(torch.arange(c) / max(c - 1, 1)).tolist(),
                         mean=float(d.nanmean())))
    return rows
