"""Feature-map variance per layer (the paper's Fig. 10): how much the block outputs vary over space, layer by
layer, on a batch of validation images (64 centre-cropped images in the paper).

Definition (the paper leaves it open): for each block output, the variance over spatial positions of each
(image, channel) — over patch tokens for a ViT, its class/register tokens left out — averaged over images and
channels. normalize=True divides it by the mean square of that output (a scale-free ratio in [0, 1]; a
LayerNorm'd and a BatchNorm'd network then share an axis)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .common import pixel_space, unwrap
from .lesion import residual_blocks


def _spatial(output: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """(N, C, positions) of a block output: (N, C, H, W) maps or (N, L, D) tokens."""
    if output.dim() == 4:
        return output.flatten(2)
    if output.dim() == 3:
        return output[:, prefix_tokens:].transpose(1, 2)
    raise ValueError(f"cannot read a feature map of shape {tuple(output.shape)}")


def feature_map_variance(model: nn.Module, images: torch.Tensor, layers: Optional[Sequence[str]] = None,
                         normalize: bool = False) -> List[dict]:
    """Per layer (default: the residual blocks, in depth order): name, normalised depth 0..1, and the
    variance defined in the module docstring, for pixel-space `images`."""
    inner = unwrap(model)
    modules = dict(inner.named_modules())
    names = list(layers) if layers is not None else [n for n, _ in residual_blocks(inner)]
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"no such layers in the model: {missing[:5]}")
    if not names:
        raise ValueError("the model has no residual blocks to read; pass layers=[...]")
    prefix = getattr(inner, "num_prefix_tokens", 0)
    values = {}

    def hook(name):
        def record(module, args, output):
            x = _spatial(output.detach().float(), prefix)
            var = x.var(dim=2, unbiased=False).mean()
            values[name] = float(var / x.pow(2).mean().clamp_min(1e-30)) if normalize else float(var)
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            pixel_space(model)(images)
    finally:
        for h in handles:
            h.remove()
    last = max(len(names) - 1, 1)
    return [dict(name=n, depth=i / last, variance=values[n]) for i, n in enumerate(names)]
