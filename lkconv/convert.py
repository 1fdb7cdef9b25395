"""`convert_model`: make the eligible depthwise convolutions of any model run on lkconv."""

from __future__ import annotations

import copy

from torch import nn

from .modules import LKConv2d


def is_eligible(module: nn.Module, min_kernel_size: int = 7) -> bool:
    """A plain nn.Conv2d (not a subclass with its own forward) that is depthwise with a large enough kernel."""
    return (type(module) is nn.Conv2d and module.groups == module.in_channels == module.out_channels
            and max(module.kernel_size) >= min_kernel_size)


def convert_model(model: nn.Module, min_kernel_size: int = 7, inplace: bool = True) -> nn.Module:
    """Turn every depthwise `nn.Conv2d` whose largest kernel side is >= `min_kernel_size` into an `LKConv2d`.

    The modules are converted in place (their class changes; LKConv2d adds no state), so everything attached
    to them stays: parameters and the optimizers holding them, forward/pre-forward/backward and state-dict
    hooks, and sharing (a conv used twice is still one module). State-dict keys do not change. With
    `inplace=False` a deep copy is converted and the original is left alone. Returns the model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_model expects an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():  # each module once, however often it is used
        if is_eligible(module, min_kernel_size):
            module.__class__ = LKConv2d
    return model


def to_stock(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The inverse of `convert_model`: every LKConv2d becomes a plain nn.Conv2d again (stock PyTorch), so the
    same model can be timed or trained both ways. A deep copy by default; returns the model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_stock expects an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, LKConv2d):
            module.__class__ = nn.Conv2d
    return model
