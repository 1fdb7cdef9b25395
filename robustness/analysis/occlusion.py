"""Patch occlusion (the paper's Fig. 5-6): drop a fraction of 16x16 patches at random, or by saliency — the
most salient patches first (salient) or the least salient first (non_salient) — with saliency from a ViT's
last-layer CLS attention (DINO ViT-S/16 in the paper)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import pixel_space

MODES = ("random", "salient", "non_salient")


def _patch_grid(images: torch.Tensor, patch_size: int) -> Tuple[int, int]:
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size={patch_size}")
    return h // patch_size, w // patch_size


def _patches_to_drop(ratio: float, mode: str, saliency: Optional[torch.Tensor], n: int, grid, patches: int,
                     generator) -> torch.Tensor:
    """(n, patches) bool: True where a patch is dropped."""
    if mode == "random":
        k = round(ratio * patches)
        order = torch.rand(n, patches, generator=generator).argsort(dim=1)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(patches).expand(n, -1))
        return rank < k
    if saliency is None:
        raise ValueError(f"mode={mode!r} needs a saliency map (N, H/P, W/P); see vit_cls_attention")
    if tuple(saliency.shape) != (n, *grid):
        raise ValueError(f"saliency must have shape {(n, *grid)} (N, H/P, W/P), got {tuple(saliency.shape)}")
    s = saliency.detach().reshape(n, patches).to("cpu", torch.float64)
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("saliency must be finite and non-negative")
    total = s.sum(dim=1, keepdim=True)
    if ratio > 0 and (total == 0).any():
        raise ValueError(f"image {int((total[:, 0] == 0).nonzero()[0])} has no saliency mass to occlude by")
    order = s.argsort(dim=1, descending=mode == "salient", stable=True)
    mass = s.gather(1, order).cumsum(dim=1)
    # The fewest patches in that order whose cumulative mass reaches ratio·total (a tiny relative tolerance so
    # that ratio=1 is not lost to rounding in the cumulative sum).
    reached = mass >= ratio * total * (1 - 1e-12)
    count = torch.where(reached.any(dim=1), reached.float().argmax(dim=1) + 1, torch.full((n,), patches))
    count = torch.where(torch.as_tensor(ratio) > 0, count, torch.zeros_like(count))
    dropped_sorted = torch.arange(patches).expand(n, -1) < count[:, None]
    return torch.zeros(n, patches, dtype=torch.bool).scatter_(1, order, dropped_sorted)


def occlude(images: torch.Tensor, ratio: float, mode: str = "random", saliency: Optional[torch.Tensor] = None,
            patch_size: int = 16, generator: Optional[torch.Generator] = None
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, H, W) in [0, 1] with patches set to 0 (black, as the paper's Fig. 5).

    - ``random``: exactly ``round(ratio * num_patches)`` patches per image, uniformly without replacement;
    - ``salient``: patches in descending ``saliency`` order until their cumulative saliency reaches ``ratio``
      of the image's total (70% of the foreground mass may be 20% of the pixels);
    - ``non_salient``: ascending order, same rule.

    ``saliency`` is (N, H/P, W/P), non-negative. Returns ``(occluded, mask)`` with ``mask`` (N, H/P, W/P) bool,
    True = dropped."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    grid = _patch_grid(images, patch_size)
    n = images.shape[0]
    drop = _patches_to_drop(float(ratio), mode, saliency, n, grid, grid[0] * grid[1], generator)
    mask = drop.view(n, *grid).to(images.device)
    pixels = mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    return images.masked_fill(pixels[:, None], 0), mask


def vit_cls_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, H/P, W/P): the last block's attention from the CLS token to each patch, averaged over heads, for a
    timm VisionTransformer taking pixel-space images (its normalisation is applied here). The paper uses DINO
    ViT-S/16 (`vit_small_patch16_224.dino` with the user's weights file)."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"vit_cls_attention needs a timm VisionTransformer, got {type(model).__name__}")
    if model.cls_token is None:
        raise ValueError("this VisionTransformer has no CLS token")
    attn = model.blocks[-1].attn
    if not all(hasattr(attn, a) for a in ("qkv", "num_heads", "head_dim", "scale")) or attn.qkv is None:
        raise ValueError(f"the last block's attention ({type(attn).__name__}) has no fused qkv projection")
    captured = {}
    hook = attn.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            pixel_space(model)(images)
    finally:
        hook.remove()
    x = captured["x"]
    b, tokens, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(b, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (N, heads, 1, tokens)
    patch = weights[:, :, 0, model.num_prefix_tokens:].mean(dim=1)
    grid = (images.shape[-2] // model.patch_embed.patch_size[0], images.shape[-1] // model.patch_embed.patch_size[1])
    if patch.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{patch.shape[1]} patch tokens do not form the {grid[0]}x{grid[1]} grid of the images")
    return patch.reshape(b, *grid)


def occlusion_accuracy(model: nn.Module, loader, ratio: float, mode: str = "random", saliency_model=None,
                       patch_size: int = 16, seed: int = 0) -> float:
    """Top-1 accuracy of pixel-space `model` on `loader` with `ratio` of the patches occluded (one point of
    Fig. 6). Salient modes take their saliency from `saliency_model` (a timm ViT) on each batch."""
    from .common import accuracy

    generator = torch.Generator().manual_seed(seed)
    if mode != "random" and saliency_model is None:
        raise ValueError(f"mode={mode!r} needs a saliency model (a ViT; DINO ViT-S/16 in the paper)")

    def perturb(images, labels):
        saliency = None
        if mode != "random":
            # The ViT sees the images at its own resolution; its patch grid is then resampled (area-weighted)
            # onto the occlusion grid when the two differ.
            size = tuple(saliency_model.patch_embed.img_size or images.shape[-2:])
            seen = images if tuple(images.shape[-2:]) == size else F.interpolate(
                images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
            saliency = vit_cls_attention(saliency_model, seen)
            grid = _patch_grid(images, patch_size)
            if tuple(saliency.shape[-2:]) != grid:
                saliency = F.interpolate(saliency[:, None], size=grid, mode="area" if saliency.shape[-1] >= grid[1]
                                         else "bilinear")[:, 0].clamp_min(0)
        return occlude(images, ratio, mode, saliency, patch_size, generator)[0]

    return accuracy(model, loader, perturb)
