"""SLaK-style decomposed large kernels (Liu et al., "More ConvNets in the 2020s", ICLR 2023): a k x s and an
s x k depthwise conv-BN in parallel with a small s x s one (e.g. 51x5 + 5x51 + 5x5), re-parameterisable into
a single k x k depthwise conv with bias."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .replknet import ConvBN, NormLayer, _conv, fuse_conv_bn


class DecomposedLargeKernelConv(nn.Module):
    """y = BN(conv_{k x s}(x)) + BN(conv_{s x k}(x)) + BN(conv_{s x s}(x)), all depthwise, map size kept.

    `merge_kernel()` folds the three branches into `lkb_reparam`, one k x k LKConv2d with bias (in place,
    idempotent); eval outputs are unchanged."""

    def __init__(self, channels: int, kernel_size: int = 51, small_kernel: int = 5,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        if small_kernel > kernel_size or (kernel_size - small_kernel) % 2:
            raise ValueError(f"a {small_kernel} kernel cannot be centred in {kernel_size}")
        self.kernel_size, self.small_kernel = kernel_size, small_kernel
        k, s = kernel_size, small_kernel
        self.lkb_tall = self._branch(channels, (k, s), norm_layer)
        self.lkb_wide = self._branch(channels, (s, k), norm_layer)
        self.small_conv = ConvBN(channels, channels, s, 1, s // 2, groups=channels, norm_layer=norm_layer)

    @staticmethod
    def _branch(channels: int, kernel: Tuple[int, int], norm_layer: NormLayer) -> nn.Sequential:
        branch = nn.Sequential()
        branch.add_module("conv", _conv_rect(channels, kernel))
        branch.add_module("bn", norm_layer(channels))
        return branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "lkb_reparam"):
            return self.lkb_reparam(x)
        return self.lkb_tall(x) + self.lkb_wide(x) + self.small_conv(x)

    def get_equivalent_kernel_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        k, s = self.kernel_size, self.small_kernel
        m = (k - s) // 2
        tall_k, tall_b = fuse_conv_bn(self.lkb_tall.conv, self.lkb_tall.bn)
        wide_k, wide_b = fuse_conv_bn(self.lkb_wide.conv, self.lkb_wide.bn)
        small_k, small_b = fuse_conv_bn(self.small_conv.conv, self.small_conv.bn)
        kernel = F.pad(tall_k, [m, m, 0, 0]) + F.pad(wide_k, [0, 0, m, m]) + F.pad(small_k, [m, m, m, m])
        return kernel, tall_b + wide_b + small_b

    @torch.no_grad()
    def merge_kernel(self) -> None:
        if hasattr(self, "lkb_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        channels = kernel.shape[0]
        merged = _conv(channels, channels, self.kernel_size, 1, self.kernel_size // 2, channels, bias=True)
        merged = merged.to(device=kernel.device, dtype=kernel.dtype)
        merged.weight.copy_(kernel)
        merged.bias.copy_(bias)
        self.lkb_reparam = merged
        for name in ("lkb_tall", "lkb_wide", "small_conv"):
            delattr(self, name)


def _conv_rect(channels: int, kernel: Tuple[int, int]) -> nn.Module:
    """A depthwise k x s (or s x k) conv that keeps the map size, on lkconv."""
    from ..modules import LKConv2d

    return LKConv2d(channels, channels, kernel, 1, (kernel[0] // 2, kernel[1] // 2), groups=channels, bias=False)
