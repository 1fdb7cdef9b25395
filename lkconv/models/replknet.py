"""RepLKNet (Ding et al., "Scaling Up Your Kernels to 31x31", CVPR 2022) on LKConv2d.

Constructor arguments and state-dict keys follow the official release, so its ImageNet checkpoints load with
`strict=True`; e.g. `stem.0.conv.weight`, `stages.0.blocks.0.large_kernel.lkb_origin.conv.weight`,
`stages.0.blocks.0.large_kernel.small_conv.bn.running_var`, `stages.0.blocks.1.pw1.conv.weight`,
`transitions.0.1.conv.weight`, `norm.weight`, `head.weight`. Merged (re-parameterised) checkpoints carry
`...large_kernel.lkb_reparam.weight/bias` and load into a model built with `small_kernel_merged=True`.

Layout: a stem of four conv-BN-ReLU (3x3 stride 2, depthwise 3x3, 1x1, depthwise 3x3 stride 2), then per stage
pairs of (RepLK block: BN, 1x1 conv-BN-ReLU, large depthwise conv + small depthwise conv, ReLU, 1x1 conv-BN,
residual) and (ConvFFN: BN, 1x1 conv-BN, GELU, 1x1 conv-BN, residual), with transitions (1x1 conv-BN-ReLU,
depthwise 3x3 stride-2 conv-BN-ReLU) between stages, and BN, average pooling and a linear head.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..modules import LKConv2d

NormLayer = Callable[[int], nn.Module]


def _drop_path(drop_prob: float) -> nn.Module:
    if drop_prob <= 0:
        return nn.Identity()
    from timm.layers import DropPath

    return DropPath(drop_prob)


def _conv(in_channels, out_channels, kernel_size, stride, padding, groups, bias=False) -> nn.Conv2d:
    """Depthwise convolutions with kernels >= 7 run on lkconv; the rest are plain nn.Conv2d."""
    depthwise = groups == in_channels == out_channels
    cls = LKConv2d if depthwise and kernel_size >= 7 else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)


class ConvBN(nn.Sequential):
    """conv -> norm (-> ReLU): children named `conv`, `bn` (and `nonlinear`) as in the official release."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=None, groups=1, relu=False,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.add_module("conv", _conv(in_channels, out_channels, kernel_size, stride, padding, groups))
        self.add_module("bn", norm_layer(out_channels))
        if relu:
            self.add_module("nonlinear", nn.ReLU())


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of one conv equivalent to conv (no bias) followed by BN in eval mode."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return conv.weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class ReparamLargeKernelConv(nn.Module):
    """A large depthwise conv-BN plus a parallel small depthwise conv-BN; `merge_kernel()` folds both BNs and
    the small kernel (added into the centre) into one large conv with bias, `lkb_reparam`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
                 small_kernel: Optional[int], small_kernel_merged: bool = False,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        padding = kernel_size // 2  # keeps the map size; the small kernel is centred in the large one
        if small_kernel_merged:
            self.lkb_reparam = _conv(in_channels, out_channels, kernel_size, stride, padding, groups, bias=True)
            return
        self.lkb_origin = ConvBN(in_channels, out_channels, kernel_size, stride, padding, groups,
                                 norm_layer=norm_layer)
        if small_kernel is not None:
            if small_kernel > kernel_size:
                raise ValueError(f"small kernel {small_kernel} larger than the large kernel {kernel_size}")
            if (kernel_size - small_kernel) % 2:
                raise ValueError(f"small kernel {small_kernel} cannot be centred in {kernel_size}")
            self.small_conv = ConvBN(in_channels, out_channels, small_kernel, stride, small_kernel // 2, groups,
                                     norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "lkb_reparam"):
            return self.lkb_reparam(x)
        out = self.lkb_origin(x)
        if hasattr(self, "small_conv"):
            out = out + self.small_conv(x)
        return out

    def get_equivalent_kernel_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = fuse_conv_bn(self.lkb_origin.conv, self.lkb_origin.bn)
        if hasattr(self, "small_conv"):
            small_k, small_b = fuse_conv_bn(self.small_conv.conv, self.small_conv.bn)
            pad = (self.kernel_size - self.small_kernel) // 2
            kernel = kernel + F.pad(small_k, [pad] * 4)
            bias = bias + small_b
        return kernel, bias

    @torch.no_grad()
    def merge_kernel(self) -> None:
        """Replace the branches by one conv with the equivalent kernel and bias (in place; idempotent)."""
        if hasattr(self, "lkb_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        conv = self.lkb_origin.conv
        merged = _conv(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride, conv.padding,
                       conv.groups, bias=True).to(device=kernel.device, dtype=kernel.dtype)
        merged.weight.copy_(kernel)
        merged.bias.copy_(bias)
        self.lkb_reparam = merged
        del self.lkb_origin
        if hasattr(self, "small_conv"):
            del self.small_conv


class RepLKBlock(nn.Module):
    def __init__(self, in_channels: int, dw_channels: int, block_lk_size: int, small_kernel: Optional[int],
                 drop_path: float, small_kernel_merged: bool = False, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.pw1 = ConvBN(in_channels, dw_channels, 1, 1, 0, relu=True, norm_layer=norm_layer)
        self.pw2 = ConvBN(dw_channels, in_channels, 1, 1, 0, norm_layer=norm_layer)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, dw_channels, block_lk_size, 1, dw_channels,
                                                   small_kernel, small_kernel_merged, norm_layer)
        self.lk_nonlinear = nn.ReLU()
        self.prelkb_bn = norm_layer(in_channels)
        self.drop_path = _drop_path(drop_path)

    def forward(self, x):
        out = self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(self.prelkb_bn(x)))))
        return x + self.drop_path(out)


class ConvFFN(nn.Module):
    def __init__(self, in_channels: int, internal_channels: int, out_channels: int, drop_path: float,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.drop_path = _drop_path(drop_path)
        self.preffn_bn = norm_layer(in_channels)
        self.pw1 = ConvBN(in_channels, internal_channels, 1, 1, 0, norm_layer=norm_layer)
        self.pw2 = ConvBN(internal_channels, out_channels, 1, 1, 0, norm_layer=norm_layer)
        self.nonlinear = nn.GELU()

    def forward(self, x):
        return x + self.drop_path(self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x)))))


class RepLKNetStage(nn.Module):
    def __init__(self, channels: int, num_blocks: int, stage_lk_size: int, drop_path: Sequence[float],
                 small_kernel: Optional[int], dw_ratio: float = 1, ffn_ratio: float = 4,
                 use_checkpoint: bool = False, small_kernel_merged: bool = False,
                 norm_intermediate_features: bool = False, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        blocks: List[nn.Module] = []
        for i in range(num_blocks):
            blocks.append(RepLKBlock(channels, int(channels * dw_ratio), stage_lk_size, small_kernel, drop_path[i],
                                     small_kernel_merged, norm_layer))
            blocks.append(ConvFFN(channels, int(channels * ffn_ratio), channels, drop_path[i], norm_layer))
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(channels) if norm_intermediate_features else nn.Identity()

    def forward(self, x):
        for block in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class RepLKNet(nn.Module):
    """RepLKNet with the official constructor arguments, plus `norm_layer` (e.g. nn.SyncBatchNorm) instead of
    the official global SyncBN switch. `num_classes=None` with `out_indices` gives a dense-task backbone."""

    def __init__(self, large_kernel_sizes: Sequence[int], layers: Sequence[int], channels: Sequence[int],
                 drop_path_rate: float, small_kernel: Optional[int], dw_ratio: float = 1, ffn_ratio: float = 4,
                 in_channels: int = 3, num_classes: Optional[int] = 1000, out_indices: Optional[Sequence[int]] = None,
                 use_checkpoint: bool = False, small_kernel_merged: bool = False,
                 norm_intermediate_features: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                 in_chans: Optional[int] = None, global_pool: str = "avg"):
        super().__init__()
        if in_chans is not None:  # timm's spelling
            in_channels = in_chans
        if num_classes is None and out_indices is None:
            raise ValueError("give num_classes (classification) or out_indices (dense tasks)")
        if num_classes is not None and out_indices is not None:
            raise ValueError("give num_classes (classification) or out_indices (dense tasks), not both")
        if num_classes is not None and norm_intermediate_features:
            raise ValueError("norm_intermediate_features is for dense tasks (out_indices), not classification")
        if not (len(large_kernel_sizes) == len(layers) == len(channels)):
            raise ValueError("large_kernel_sizes, layers and channels need one entry per stage")
        self.out_indices = out_indices
        self.num_classes = num_classes or 0
        self.num_stages = len(layers)
        self.use_checkpoint = use_checkpoint
        self.num_features = self.head_hidden_size = channels[-1]
        width = channels[0]
        self.stem = nn.ModuleList([
            ConvBN(in_channels, width, 3, 2, 1, relu=True, norm_layer=norm_layer),
            ConvBN(width, width, 3, 1, 1, groups=width, relu=True, norm_layer=norm_layer),
            ConvBN(width, width, 1, 1, 0, relu=True, norm_layer=norm_layer),
            ConvBN(width, width, 3, 2, 1, groups=width, relu=True, norm_layer=norm_layer),
        ])
        # Stochastic depth grows linearly over the blocks.
        rates = torch.linspace(0, drop_path_rate, sum(layers)).tolist()
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        self.feature_info = []
        stride = 4
        for i, depth in enumerate(layers):
            start = sum(layers[:i])
            self.stages.append(RepLKNetStage(channels[i], depth, large_kernel_sizes[i], rates[start:start + depth],
                                             small_kernel, dw_ratio, ffn_ratio, use_checkpoint, small_kernel_merged,
                                             norm_intermediate_features, norm_layer))
            self.feature_info.append(dict(num_chs=channels[i], reduction=stride, module=f"stages.{i}"))
            if i < len(layers) - 1:
                self.transitions.append(nn.Sequential(
                    ConvBN(channels[i], channels[i + 1], 1, 1, 0, relu=True, norm_layer=norm_layer),
                    ConvBN(channels[i + 1], channels[i + 1], 3, 2, 1, groups=channels[i + 1], relu=True,
                           norm_layer=norm_layer)))
                stride *= 2
        if num_classes is not None:
            self.norm = norm_layer(channels[-1])
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(channels[-1], num_classes) if num_classes > 0 else nn.Identity()

    # ---- forward -------------------------------------------------------------------------------------
    def _stem(self, x):
        x = self.stem[0](x)
        for layer in self.stem[1:]:
            x = checkpoint(layer, x, use_reentrant=False) if self.use_checkpoint and x.requires_grad else layer(x)
        return x

    def forward_features(self, x) -> Union[torch.Tensor, List[torch.Tensor]]:
        x = self._stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if self.out_indices is not None and i in self.out_indices:
                outs.append(stage.norm(x))
            if i < self.num_stages - 1:
                x = self.transitions[i](x)
        return outs if self.out_indices is not None else x

    def forward_head(self, x, pre_logits: bool = False):
        x = torch.flatten(self.avgpool(self.norm(x)), 1)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        x = self.forward_features(x)
        if self.out_indices is not None:
            return x
        return self.forward_head(x)

    def forward_intermediates(self, x, indices: Optional[Union[int, Sequence[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs for timm's `features_only=True` (each through the stage's norm, an identity unless
        norm_intermediate_features)."""
        if output_fmt != "NCHW":
            raise ValueError("RepLKNet features are NCHW")
        take = _take_indices(self.num_stages, indices)
        x = self._stem(x)
        intermediates = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in take:
                intermediates.append(stage.norm(x))
            if stop_early and i >= max(take):
                break
            if i < self.num_stages - 1:
                x = self.transitions[i](x)
        if intermediates_only:
            return intermediates
        return self.forward_head(x), intermediates

    def prune_intermediate_layers(self, indices=None, prune_norm: bool = False, prune_head: bool = True):
        take = _take_indices(self.num_stages, indices)
        last = max(take)
        self.stages = self.stages[:last + 1]
        self.transitions = self.transitions[:last]
        self.num_stages = last + 1
        if prune_head and hasattr(self, "head"):
            self.head = nn.Identity()
            if prune_norm:
                self.norm = nn.Identity()
        return take

    # ---- classifier and re-parameterisation ------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def structural_reparam(self) -> "RepLKNet":
        """Fold BN and the small kernels into the large kernels, in place (idempotent). Eval outputs are
        unchanged (up to rounding)."""
        for m in self.modules():
            if isinstance(m, ReparamLargeKernelConv):
                m.merge_kernel()
        return self

    reparameterize = structural_reparam  # timm's name for the same operation


def _take_indices(num_stages: int, indices) -> List[int]:
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, int):
        return list(range(num_stages - indices, num_stages))
    return [i % num_stages for i in indices]


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Merge every re-parameterisable large-kernel module of `model` (anything with `merge_kernel()`:
    ReparamLargeKernelConv, DecomposedLargeKernelConv); a copy unless inplace."""
    import copy

    if not inplace:
        model = copy.deepcopy(model)
    for m in list(model.modules()):
        if hasattr(m, "merge_kernel"):
            m.merge_kernel()
    return model
