"""Effective receptive field (RepLKNet, Ding et al. 2022, Fig. 1 and Table 3): how much each input pixel
contributes to the centre of a feature map.

The map is Σ over images and input channels of |∂ (Σ_c ReLU(out[c, h/2, w/2])) / ∂ input|, with `out` the
feature map of `layer` (the model's `forward_features` by default; a ViT's patch tokens as a map). The high-contribution area ratio at
threshold t is the area of the smallest square centred on the map's centre holding a fraction t of its total,
divided by the image's area (RepLKNet's r(t); a larger ratio = a larger effective receptive field). The ReLU
is RepLKNet's choice, and needed: after a final LayerNorm the plain channel sum is constant. Plot
log10(map + 1) normalised to [0, 1], as RepLKNet does."""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from .common import pixel_space, unwrap

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def area_ratios(contribution: torch.Tensor, thresholds: Sequence[float] = THRESHOLDS) -> Dict[float, float]:
    """RepLKNet's high-contribution area ratio r(t) of an (H, W) contribution map (see module docstring)."""
    m = contribution.double()
    h, w = m.shape
    cy, cx = h // 2, w // 2
    total = float(m.sum())
    if total <= 0:
        raise ValueError("the contribution map is all zeros")
    out = {}
    for t in thresholds:
        for r in range(max(h, w)):
            window = m[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
            if float(window.sum()) >= t * total * (1 - 1e-12):
                out[t] = window.numel() / (h * w)
                break
        else:
            out[t] = 1.0
    return out


def _feature_map(model: nn.Module, images: torch.Tensor, layer: Optional[str]) -> torch.Tensor:
    inner = unwrap(model)
    wrapped = pixel_space(model)
    if layer is None:
        if hasattr(inner, "forward_features"):
            mean, std = wrapped.mean.to(images), wrapped.std.to(images)
            return inner.forward_features((images - mean) / std)
        return wrapped(images)
    modules = dict(inner.named_modules())
    if layer not in modules:
        raise ValueError(f"no layer {layer!r} in the model")
    captured = {}
    handle = modules[layer].register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    try:
        wrapped(images)
    finally:
        handle.remove()
    return captured["out"]


def _tokens_to_map(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A ViT's (N, prefix + H*W, D) tokens as an (N, D, H, W) map of its patch tokens; maps pass through."""
    if out.dim() == 3 and hasattr(model, "patch_embed"):
        tokens = out[:, getattr(model, "num_prefix_tokens", 0):]
        side = math.isqrt(tokens.shape[1])
        if side * side == tokens.shape[1]:
            return tokens.transpose(1, 2).reshape(out.shape[0], -1, side, side)
    return out


def effective_receptive_field(model: nn.Module, images: torch.Tensor, layer: Optional[str] = None,
                              thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """``dict(map=(H, W) tensor, area_ratio={t: r(t)})`` for pixel-space `images` (N, 3, H, W)."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    for image in images.split(1):
        x = image.detach().clone().requires_grad_(True)
        out = _tokens_to_map(unwrap(model), _feature_map(model, x, layer))
        if out.dim() != 4:
            raise ValueError(f"the feature map has shape {tuple(out.shape)}; the ERF needs a (N, C, H, W) map")
        centre = torch.relu(out[:, :, out.shape[-2] // 2, out.shape[-1] // 2]).sum()
        (grad,) = torch.autograd.grad(centre, x)
        total += grad.abs().sum(dim=(0, 1)).to("cpu", torch.float64)
    return dict(map=total, area_ratio=area_ratios(total, thresholds))
