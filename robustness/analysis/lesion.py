"""Block lesion (the paper's Fig. 7): make n randomly chosen residual blocks the identity at inference and see
how much accuracy survives. Only blocks whose output shape equals their input shape can be dropped."""

from __future__ import annotations

import contextlib
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .common import accuracy, unwrap


def _droppable_types() -> Tuple[type, ...]:
    from timm.models import convnext, resnet, resnetv2, vision_transformer

    from lkconv.models.replknet import ConvFFN, RepLKBlock

    return (RepLKBlock, ConvFFN, convnext.ConvNeXtBlock, vision_transformer.Block, vision_transformer.ResPostBlock,
            resnet.BasicBlock, resnet.Bottleneck, resnetv2.PreActBasic, resnetv2.PreActBottleneck,
            resnetv2.Bottleneck)


def _shape_preserving(module: nn.Module) -> bool:
    """A block that adds its branch to an unchanged input: no downsampling shortcut, stride 1."""
    for attr in ("downsample", "shortcut"):
        sub = getattr(module, attr, None)
        if sub is not None and not isinstance(sub, nn.Identity):
            return False
    return True


def residual_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of the residual blocks that can be dropped, in depth order: RepLKNet's RepLK and ConvFFN
    blocks, ConvNeXt blocks, ViT blocks, ResNet/BiT bottlenecks without a downsampling shortcut."""
    kinds = _droppable_types()
    return [(name, m) for name, m in unwrap(model).named_modules()
            if isinstance(m, kinds) and _shape_preserving(m)]


def _identity(x, *args, **kwargs):
    return x


@contextlib.contextmanager
def drop_blocks(model: nn.Module, names: Iterable[str]):
    """Within the block, the named residual blocks (see `residual_blocks`) return their input unchanged; the
    model is restored on exit, also after an exception."""
    blocks = dict(residual_blocks(model))
    names = list(names)
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise ValueError(f"not droppable residual blocks of this model: {unknown[:5]} "
                         f"(droppable: {list(blocks)[:5]}{' ...' if len(blocks) > 5 else ''})")
    patched = []
    try:
        for name in dict.fromkeys(names):
            module = blocks[name]
            if "forward" in module.__dict__:
                raise ValueError(f"block {name} already has an instance forward (dropped twice?)")
            module.forward = _identity  # an instance attribute shadows the class's forward
            patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward


def lesion(model: nn.Module, loader, n: int, samples: int = 10, generator: Optional[torch.Generator] = None,
           blocks: Optional[Sequence[str]] = None) -> dict:
    """Top-1 accuracy with `n` random residual blocks dropped, over `samples` random choices (the same
    choice on every torchrun rank when `generator` is seeded alike). Returns mean/min/max/accuracies and the
    fraction n/num_blocks (Fig. 7's x-axis). n=0 is evaluated once."""
    names = list(blocks) if blocks is not None else [name for name, _ in residual_blocks(model)]
    if not 0 <= n <= len(names):
        raise ValueError(f"n must be between 0 and the {len(names)} droppable blocks, got {n}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    accs, chosen = [], []
    for _ in range(1 if n == 0 else samples):
        pick = sorted(torch.randperm(len(names), generator=generator)[:n].tolist())
        with drop_blocks(model, [names[i] for i in pick]):
            accs.append(accuracy(model, loader))
        chosen.append([names[i] for i in pick])
    return dict(n=n, num_blocks=len(names), fraction=n / len(names) if names else 0.0,
                mean=sum(accs) / len(accs), min=min(accs), max=max(accs), accuracies=accs, dropped=chosen)
