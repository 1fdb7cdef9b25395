"""`convert_model`: swap the eligible depthwise convolutions of any model for LKConv2d."""

from __future__ import annotations

import copy

from torch import nn

from .modules import LKConv2d


def is_eligible(module: nn.Module, min_kernel_size: int = 7) -> bool:
    """A plain nn.Conv2d (not a subclass with its own forward) that is depthwise with a large enough kernel."""
    return (type(module) is nn.Conv2d and module.groups == module.in_channels == module.out_channels
            and max(module.kernel_size) >= min_kernel_size)


def convert_model(model: nn.Module, min_kernel_size: int = 7, inplace: bool = True) -> nn.Module:
    """Replace every depthwise `nn.Conv2d` whose largest kernel side is >= `min_kernel_size` by an `LKConv2d`
    holding the same parameters. State-dict keys do not change. Returns the (possibly new) model."""
    if not inplace:
        model = copy.deepcopy(model)
    if is_eligible(model, min_kernel_size):
        return LKConv2d.from_conv2d(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_eligible(child, min_kernel_size):
                setattr(parent, name, LKConv2d.from_conv2d(child))
    return model
